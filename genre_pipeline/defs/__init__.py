"""Dagster wiring: assets, checks, schedules and resources. Thin: the work is in plain modules."""
