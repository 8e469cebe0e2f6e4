"""Shared vocabulary of every layer: stream declarations, windows, errors, durations; no I/O."""
