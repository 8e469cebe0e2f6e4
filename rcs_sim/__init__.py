"""A stand-in for the provider's API for tests, demo and benchmarks; imports nothing of rcs_sync."""
