"""Benchmarks for dam-pipeline against the naive per-image design (`python -m bench.run`)."""
