"""Benchmarks: scripts that measure this machine, run by hand, never by the pipeline."""
