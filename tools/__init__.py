"""Developer tools run from a checkout (python -m tools.NAME): parity against the authors' code, ablations.
Not part of the wheel."""
