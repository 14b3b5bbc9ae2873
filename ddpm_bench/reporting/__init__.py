"""Tables (pandas + tabulate), figures (matplotlib) and provenance for `rate-distortion` and `report`.

`columns` names every output key once; `inputs` reads the outputs of the other commands (nll, fid, gap,
rate-distortion and reproduce run directories); `paper` reads the paper's numbers; `tables` and
`figures` build Tables 1-4, Figure 5 and "where the bits go" of Ho et al. (2020) beside the measured
values; `verdict` says in words what a gap.json says about overfitting; `paths` makes every path a
report shows relative to it.
"""
