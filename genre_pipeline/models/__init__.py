"""The deployable model and everything that reads it; no training code.

Where each concept lives:
- ``movie``: the movie the model reads (fields, limits, example, MLflow signature) and its output columns.
- ``encoders/``: the pretrained text and image encoders, the one factory that builds them from an
  ``EncoderRef``, their ONNX Runtime backends, the bundled MPNet weights, and the embeddings cache.
- ``heads``, ``members``, ``metadata``, ``stacker``: the parts a classifier is made of (each member
  fits and predicts; the stacker combines them with the metadata).
- ``classifier``: the GenreClassifier (members, stacker, thresholds) saved to and loaded from a folder.
- ``pyfunc``: the MLflow pyfunc model from raw inputs to genres (``pyfunc_entry`` is what MLflow logs).
- ``thresholds``, ``metrics``: per-genre decisions and the figures every report uses.
- ``registry``: the tracking URI, the registered model, the champion alias, candidates and promotion;
  ``promotion``: the candidate and the champion scored on the same movies before the registry decides.
- ``predictor``: predicting with a registered model; ``scoring``: many movies, a snapshot, batch tables.

Training, evaluation reports and MLflow training runs are ``genre_pipeline.training``.
"""
