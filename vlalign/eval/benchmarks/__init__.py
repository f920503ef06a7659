"""Benchmark scorers that reproduce each benchmark's official scoring script (and lmms-eval's variant where
the two differ), one module per benchmark. Each is a pure function: (question records, predictions by
question id) -> (per-sample decisions, metrics). Readers of the official files and the `vlalign eval`
commands that use these are issue 15's remaining work."""
