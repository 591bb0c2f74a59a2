"""Benchmarks: speed lives here, not in the tests."""
