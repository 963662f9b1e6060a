"""Encoders, genre models, metrics, MLflow tracking and prediction. Knows nothing of Dagster."""
