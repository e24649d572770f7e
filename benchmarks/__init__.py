"""simpleunet.benchmarks: the benchmark suite (``python -m simpleunet.benchmarks.run`` writes RESULTS.md) and the
PyTorch eager baseline that ``simpleunet-bench`` picks up when the toolkit is installed."""
