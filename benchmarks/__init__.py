"""Measurement scripts, run as `python benchmarks/NAME.py` (results in benchmarks/README.md);
a package so that the tests import them as modules."""
