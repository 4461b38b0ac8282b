"""Runnable examples (not installed with the packages): ``python -m examples.<name>`` from the repository root."""
