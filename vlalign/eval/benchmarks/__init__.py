"""The field's benchmarks, one module per benchmark: a reader of its own files (and of the same set as
lmms-lab publishes it with the `datasets` library), and a scorer that reproduces its official scoring
script (and lmms-eval's variant where the two differ) as a pure function (question records, predictions by
question id) -> (per-sample decisions, metrics). `catalog` lists them for `vlalign eval benchmarks` /
`eval score`; `vlalign.eval.benchmark_run` answers and scores."""
