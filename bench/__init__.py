"""Benchmarks behind `make bench`; results go to docs/BENCHMARKS.md."""
