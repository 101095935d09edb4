"""Benchmarks: each module prints a table of medians and the ratios it claims. Never run as tests."""
