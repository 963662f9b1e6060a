"""Training the models: what serving never imports.

Where each concept lives:
- ``config``: every training setting (heads, fine-tuning, baseline, stack) and ``ModelSetup``, what the
  models of a run share (label set, encoders, device, MLflow store).
- ``data``: the training data a model sees: labels, splits, texts, posters, metadata, cached embeddings.
- ``loop``: the one training loop of every head (early stopping, best checkpoint).
- ``finetune``: the encoders trained together with a head.
- ``trainers``: the baseline, the heads (frozen or fine-tuned) and the fusion comparison.
- ``stack``: the stacked classifier's cross-fitting and its variants.
- ``evaluation``: thresholds tuned on validation, figures on test, the report files.
- ``runs``: one MLflow run per trained model, and the one call each model asset makes.
"""

from genre_pipeline import openmp  # noqa: F401 - before any torch import
