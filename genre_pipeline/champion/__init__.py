"""The champion's lifecycle, between the deployable model (``genre_pipeline.models``) and what serves,
watches and wires it (``serving``, ``monitoring``, ``defs``); no training code.

Where each concept lives:
- ``registry``: the tracking store a data folder uses, the registered model, the @champion and
  @challenger aliases and their lookup, the candidates.
- ``seen``: the movies a registered model's run trained, tuned and tested on, and the labelled movies it
  never saw (what monitoring and promotion score it on as new).
- ``promotion``: the candidate and the champion scored on the same movies, the promotion rule and the
  check that applies it (``PROMOTION_CHECK``), and the only code that moves @champion.
- ``predictor``: a registered or logged model loaded for prediction, reading its logged output.
- ``scoring``: many movies at once: the data folder's splits, a snapshot folder (``genre-pipeline
  evaluate``), the batch predictions table.
"""
