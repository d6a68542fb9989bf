"""Tools over model graphs and built models: profiling and FLOP cross-checks, diagrams,
explain, saving and loading (and export)."""
