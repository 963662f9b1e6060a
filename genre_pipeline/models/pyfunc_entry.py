"""The genre classifier's pyfunc model, for MLflow's models-from-code logging (see training.runs.log_classifier)."""

import mlflow

from genre_pipeline.models.pyfunc import GenreClassifierModel

mlflow.models.set_model(GenreClassifierModel())
