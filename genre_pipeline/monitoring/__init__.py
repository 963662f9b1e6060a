"""Watching the served model as the catalog moves: the champion scored on the movies that arrived after
its training data was fixed (prequential evaluation), drift between those movies and its training
data, and when retraining pays. Plain functions: the Dagster wiring is in ``defs/monitoring.py``."""
