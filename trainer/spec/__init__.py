"""Experiment specs: YAML with line numbers, overrides, sweep expansion into planned runs, and units."""
