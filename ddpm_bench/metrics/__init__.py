"""FID and IS (paper section 4, Table 1) through the established libraries, torch-fidelity and clean-fid.

Nothing here re-implements what those libraries do: `extractors` registers the feature networks with
torch-fidelity (the standard Inception, the packaged offline FID Inception, a tiny deterministic test
extractor), each backend module drives its library's own resizing, feature and statistic functions,
`reference_cache` keeps reference statistics under a key that names everything they depend on, and
`protocol` holds the paper's evaluation protocol.
"""
