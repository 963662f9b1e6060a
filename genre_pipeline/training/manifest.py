"""What tells a whole model folder or embeddings cache from one a killed step or a damaged disk left.

A model's report folder gets ``manifest.json`` last: every report file's sha256, and the folder of the
model it logged (in a local artifact store) with its files'. A folder without it, or whose files differ,
is not whole: the model is trained again rather than read. ``damaged`` lists every asset whose files are
not whole, for the sensor (and the refresh) that materializes them again.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow

from genre_pipeline.files import atomic_write_bytes, differences, file_digests
from genre_pipeline.models.encoders.cache import DamagedEmbeddings, Embeddings
from genre_pipeline.store import DataStore

MANIFEST_FILE = "manifest.json"
MODELS = ("baseline_model", "text_model", "image_model", "fusion_model", "stacked_model")
EMBEDDING_ASSETS = {"text": "text_embeddings", "image": "poster_embeddings"}  # by the files' first word


def _local_folder(model_id: str) -> Path | None:
    """The folder of a logged model in a local artifact store (None for a remote one)."""
    location = urlparse(mlflow.get_logged_model(model_id).artifact_location)
    return Path(url2pathname(location.path)) if location.scheme in ("", "file") else None


def remove(folder: Path) -> None:
    (Path(folder) / MANIFEST_FILE).unlink(missing_ok=True)


def write(folder: Path, model_id: str | None) -> None:
    """The manifest of the report files in ``folder`` and of the logged model ``model_id`` (if any)."""
    logged = _local_folder(model_id) if model_id else None
    manifest = {
        "report": file_digests(folder, leave_out=(MANIFEST_FILE,)),
        "logged_model": {"folder": str(logged), "files": file_digests(logged)} if logged else None,
    }
    atomic_write_bytes(Path(folder) / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())


def damage(store: DataStore, name: str) -> str | None:
    """Why the report folder of model ``name``, or the model it logged, is not whole (a training killed
    before its manifest, a file truncated or changed since); None when it is, or was never trained."""
    folder = store.model_dir(name)
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return (
            f"{folder} has no readable {MANIFEST_FILE}: its training did not finish (or code before manifests wrote it)"
        )
    changed = differences(folder, manifest["report"])
    if changed:
        return f"{folder}: {', '.join(changed)} missing or changed since the training wrote them"
    logged = manifest["logged_model"]
    changed = differences(logged["folder"], logged["files"]) if logged else []
    if changed:
        return f"the logged model of {name} ({logged['folder']}): {', '.join(changed)} missing or changed since logged"
    return None


def damaged(store: DataStore) -> dict[str, str]:
    """The assets whose files are not whole, each with why: an embeddings cache that does not read
    whole, a model folder or logged model that differs from its manifest."""
    found = {}
    for path in sorted(store.embeddings_dir.glob("*.npz")) if store.embeddings_dir.is_dir() else ():
        if ".shard-" in path.name:
            continue  # a shard's own file: read, and set aside if need be, by the shard's next attempt
        try:
            Embeddings.load(path)
        except DamagedEmbeddings as error:
            found.setdefault(EMBEDDING_ASSETS.get(path.name.split("-")[0], "text_embeddings"), str(error))
    for name in MODELS:
        why = damage(store, name)
        if why:
            found[name] = why
    return found
