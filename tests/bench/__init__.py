"""Benchmarks (not collected by pytest): `python -m tests.bench.bench_streams --help`."""
