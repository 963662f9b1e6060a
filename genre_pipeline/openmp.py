"""scikit-learn's boosted trees loaded before PyTorch, so that all of scikit-learn runs on one OpenMP runtime.

torch loads its own libgomp into the process's global namespace: scikit-learn's compiled modules imported
after torch then call torch's runtime, those imported before call scikit-learn's own. A fit that calls both,
as the stacker's boosted trees do (their loss and their histograms), keeps two teams of threads, each
spinning while the other works: on 2 cores the snapshot's stacker took 159 s instead of 65 s in a process
that had imported torch first. ``genre_pipeline.models`` and ``genre_pipeline.training``, under which every
torch import lies, import this module before anything else.
"""

import sklearn.ensemble  # noqa: F401
