"""File helpers shared by every layer: atomic writes, their leftovers, and images inlined as base64.

Below everything that writes data (tmdb, ingestion, store, dataset, models): it imports nothing of
the project."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import shutil
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
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = out_of_space(error)
        if full is not None:
            raise OSError(errno.ENOSPC, out_of_space_message(path.parent, full)) from error
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


def file_digests(folder: Path | str, *, leave_out: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file below ``folder`` by its path relative to it, the temporary files of atomic
    writes and the names ``leave_out`` aside: what a completion marker records."""
    folder = Path(folder)
    digests = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not path.name.endswith(".tmp") and name not in leave_out:
            digests[name] = _sha256(path)
    return digests


def differences(folder: Path | str, recorded: dict[str, str]) -> list[str]:
    """The files of ``recorded`` (``file_digests``) that are missing from ``folder`` or differ now."""
    folder = Path(folder)
    return [
        name for name, digest in recorded.items() if not (folder / name).is_file() or _sha256(folder / name) != digest
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def out_of_space(error: BaseException | None) -> BaseException | None:
    """The error in ``error``'s chain (itself, or what it was raised from) that says the disk or quota
    is full: an OSError's ENOSPC or EDQUOT, or sqlite's "database or disk is full" as MLflow or
    SQLAlchemy wrap it; None when there is none."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        if "database or disk is full" in str(error) or "No space left on device" in str(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def out_of_space_message(folder: Path | str, error: BaseException) -> str:
    """What to tell a user whose write under ``folder`` found its disk full (``error``: out_of_space's)."""
    free = shutil.disk_usage(folder).free / 2**20 if Path(folder).exists() else float("nan")
    lines = str(error).splitlines() or [type(error).__name__]
    said = next((line for line in lines if "disk is full" in line or "No space left" in line), lines[0])
    return (
        f"no space left on the device of {folder} ({free:.0f} MiB free): {said.strip()}. Free space "
        "and run the step again: a file is replaced only once written whole, and what a step left unfinished is redone"
    )


def png_base64(path: Path | str) -> str:
    """A PNG file as base64, for a data: URL in HTML or markdown."""
    return base64.b64encode(Path(path).read_bytes()).decode()
