"""Benchmarks behind ``ehrsurv bench …``; each writes ``bench.json`` (flat keys) and ``SUMMARY.md``."""
