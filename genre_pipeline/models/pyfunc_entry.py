"""The genre classifier's pyfunc model, for MLflow's models-from-code logging (see tracking.log_classifier)."""

import mlflow

from genre_pipeline.models.classifier import GenreClassifierModel

mlflow.models.set_model(GenreClassifierModel())
