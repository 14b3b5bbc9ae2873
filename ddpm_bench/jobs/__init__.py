"""One module per command: load inputs, run the pure computations, write outputs."""
