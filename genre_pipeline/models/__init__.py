"""The deployable model: what a registered version is made of and how it goes from raw inputs to
genres; no training code, no registry.

Where each concept lives:
- ``movie``: the movie the model reads (fields, limits, example, MLflow signature) and its output columns.
- ``encoders/``: the pretrained text and image encoders, the one factory that builds them from an
  ``EncoderRef``, their ONNX Runtime backends, the bundled MPNet weights, and the embeddings cache.
- ``heads``, ``members``, ``metadata``, ``stacker``: the parts a classifier is made of (each member
  fits and predicts; the stacker combines them with the metadata).
- ``classifier``: the GenreClassifier (members, stacker, thresholds) saved to and loaded from a folder.
- ``pyfunc``: the MLflow pyfunc model from raw inputs to genres (``pyfunc_entry`` is what MLflow logs).
- ``thresholds``, ``metrics``: per-genre decisions and the figures every report uses.

Training, evaluation reports and MLflow training runs are ``genre_pipeline.training``; the registered
champion, promotion, the predictor and scoring are ``genre_pipeline.champion``.
"""

from genre_pipeline import openmp  # noqa: F401 - before any torch import
