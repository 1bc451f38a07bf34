"""Benchmarks (`python -m bench`); timings live here, never in tests."""
