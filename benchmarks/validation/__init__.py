"""Helpers of ``benchmarks/validate.py``: ``stats`` (pure statistics, unit-tested in
tests/test_validation_stats.py), ``measure`` (reading nmbids outputs, re-quantifying),
``report`` (tables, figures, docs/validation.md)."""
