"""Fingerprints that decide whether a model must train again: the code that trains it (its trainer
module and every project module that module imports, however indirectly) and everything it trains on.
Editing serving, promotion or the Dagster wiring changes no model's code fingerprint; editing the
stack's cross-fitting changes only the stack's."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from genre_pipeline.training.data import TrainingData

PACKAGE = Path(__file__).resolve().parents[1]
PROJECT = "genre_pipeline"
# The module each model's training starts from; runs.py (which logs and evaluates every model) counts too.
TRAINERS = {
    "baseline_model": "genre_pipeline.training.trainers",
    "text_model": "genre_pipeline.training.trainers",
    "image_model": "genre_pipeline.training.trainers",
    "fusion_model": "genre_pipeline.training.trainers",
    "stacked_model": "genre_pipeline.training.stack",
}
RUNS_MODULE = "genre_pipeline.training.runs"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (``from a import b`` gives ``a`` and
    ``a.b``: b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _source_of(module: str) -> Path | None:
    """The file of a project module (a package's __init__.py), or None when ``module`` is no module."""
    relative = Path(*module.split(".")[1:])
    for candidate in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_closure(root: str) -> list[Path]:
    """The source files of ``root`` and of every project module it imports, directly or not, with the
    packages they sit in (importing a module runs its packages' __init__ first)."""
    seen: dict[str, Path] = {}
    todo = [root]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for n in range(2, len(parts) + 1):
            name = ".".join(parts[:n])
            path = _source_of(name)
            if path is None or name in seen:
                continue
            seen[name] = path
            todo.extend(m for m in imported_modules(path) if m.split(".")[0] == PROJECT)
    return sorted(set(seen.values()))


@functools.cache
def model_code_fingerprint(model: str) -> str:
    """A hash of the code that trains ``model`` (one of TRAINERS): its trainer's import closure and runs.py."""
    files = sorted(set(module_closure(TRAINERS[model])) | {_source_of(RUNS_MODULE)})
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def training_code_fingerprint() -> str:
    """Every model's code fingerprint at once: what the retraining gate compares."""
    return hashlib.sha256(json.dumps({m: model_code_fingerprint(m) for m in TRAINERS}).encode()).hexdigest()[:16]


def data_fingerprint(data: TrainingData) -> str:
    """A hash of everything a model trains and is scored on: the movies, their splits, labels, texts,
    titles, metadata, poster files and cached embeddings."""
    digest = hashlib.sha256()
    for array in (data.ids, data.labels, data.has_poster):  # numbers: their bytes (not the split's pointers)
        digest.update(np.ascontiguousarray(array).tobytes())
    posters = [path.name if path else None for path in data.poster_files]  # what fine-tuning reads
    digest.update(json.dumps([data.split.tolist(), data.classes, data.texts, data.titles, posters]).encode())
    digest.update(pd.util.hash_pandas_object(data.metadata, index=False).to_numpy().tobytes())
    for features in (data.text_features, data.poster_features):
        for name in sorted(features):
            digest.update(name.encode() + np.ascontiguousarray(features[name]).tobytes())
    return digest.hexdigest()[:16]
