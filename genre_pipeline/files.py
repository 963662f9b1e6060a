"""File helpers shared by every layer: atomic writes, their leftovers, and images inlined as base64.

Below everything that writes data (tmdb, ingestion, store, dataset, models): it imports nothing of
the project."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import (single-threaded): os.umask can only be read by setting it.
_FILE_MODE = 0o666 & ~_read_umask()


def content_key(data: bytes | str) -> str:
    """The content hash that names a text or a file's bytes: what embeddings are cached by."""
    return hashlib.sha1(data.encode() if isinstance(data, str) else data).hexdigest()


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half a file.
    The file gets the mode a plain ``open()`` would give (mkstemp's 0600 otherwise stays)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_partial_files(*folders: Path) -> int:
    """Delete the temporary files of atomic writes that a killed process left (``.name.*.tmp``); only
    safe while holding the lock of every writer of ``folders``. Returns how many were removed."""
    removed = 0
    for folder in folders:
        for partial in Path(folder).rglob(".*.tmp") if Path(folder).is_dir() else ():
            partial.unlink(missing_ok=True)
            removed += 1
    return removed


def png_base64(path: Path | str) -> str:
    """A PNG file as base64, for a data: URL in HTML or markdown."""
    return base64.b64encode(Path(path).read_bytes()).decode()
