"""Benchmark scorers that reproduce each benchmark's official scoring script (and lmms-eval's variant where
the two differ), one module per benchmark. Each is a pure function: (question records, predictions by
question id) -> (per-sample decisions, metrics). Nothing calls them yet: the readers of the official files
and the `vlalign eval score` / `eval benchmarks` commands are still to come."""
