"""Shared vocabulary of every layer: streams, windows, responses, errors, events; no network."""
