"""Benchmarks run from a checkout (python -m benchmarks.NAME): scripts that print figures side by side.
Not part of the wheel."""
