"""Benchmarks: figures, not pass/fail (see the Makefile's bench targets)."""
