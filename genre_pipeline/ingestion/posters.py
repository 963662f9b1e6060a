"""Posters: verification with PIL, the download step, and the status every movie's poster gets.

A file is a poster only if it fully decodes to RGB at a usable size. Statuses, one row per movie in
``posters/poster_status.parquet``: ``ok`` (stored in images/), ``no_poster`` (TMDb has none),
``http_error`` (the download kept failing: retried next run), ``corrupt`` (failed verification: the
bytes are kept in rejected/). The data set adds ``not_downloaded`` for a movie the posters step has
not reached yet. An ``ok`` row carries the stored file's content hash (``sha1``), taken while the
bytes are in memory, so that the embeddings never read every poster just to key it.
"""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from typing import TYPE_CHECKING, Iterable

import pandas as pd

from genre_pipeline.files import atomic_write_bytes, content_key
from genre_pipeline.images import MIN_HEIGHT, MIN_WIDTH, PosterError, verify_poster
from genre_pipeline.ingestion.results import Progress, settled
from genre_pipeline.options import described
from genre_pipeline.tmdb.client import TMDbClient, TMDbError

if TYPE_CHECKING:
    from genre_pipeline.store import DataStore

OK, NO_POSTER, HTTP_ERROR, CORRUPT = "ok", "no_poster", "http_error", "corrupt"
STATUSES = (OK, NO_POSTER, HTTP_ERROR, CORRUPT)
NOT_DOWNLOADED = "not_downloaded"
STATUS_COLUMNS = ["id", "poster_path", "status", "file", "width", "height", "bytes", "sha1", "error"]


# --- statuses ------------------------------------------------------------------------
def read_statuses(store: DataStore) -> pd.DataFrame:
    """The status table; empty, with its columns, before the first download."""
    if not store.poster_status_file.is_file():
        return pd.DataFrame(columns=STATUS_COLUMNS)
    return store.read_table(store.poster_status_file)


def write_statuses(store: DataStore, frame: pd.DataFrame) -> None:
    store.write_table(store.poster_status_file, frame)


# --- download ------------------------------------------------------------------------
def poster_file_name(poster_path: str) -> str:
    name = poster_path.rsplit("/", 1)[-1]
    if not name or name.startswith("."):
        raise ValueError(f"unusable poster_path {poster_path!r}")
    return name


@dataclasses.dataclass(frozen=True)
class PosterRules:
    """Which poster file is fetched and what it must be; the posters asset's run config is made from these."""

    size: str = described("w342", "A TMDb poster size from /configuration.")
    min_width: int = described(MIN_WIDTH, "Refuse narrower images (pixels).")
    min_height: int = described(MIN_HEIGHT, "Refuse shorter images (pixels).")


def download_posters(
    client: TMDbClient,
    store: DataStore,
    movies: Iterable[dict],
    *,
    image_base_url: str,
    rules: PosterRules | None = None,
    previous: pd.DataFrame | None = None,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Download, verify and store each movie's poster; return a status row per movie and counts.

    A poster already stored and verified for the same poster_path is kept without a
    request. Bytes that fail verification go to ``rejected/`` and never to ``images/``.
    """
    rules = rules or PosterRules()
    size, min_width, min_height = rules.size, rules.min_width, rules.min_height
    previous_ok = {}
    if previous is not None and len(previous):
        for row in previous[previous["status"] == OK].itertuples():
            previous_ok[int(row.id)] = row._asdict()
    rows: dict[int, dict] = {}
    to_download = []
    reused = 0
    for movie in movies:
        movie_id, poster_path = int(movie["id"]), movie.get("poster_path")
        if not poster_path:
            rows[movie_id] = _status_row(movie_id, None, NO_POSTER)
            continue
        old = previous_ok.get(movie_id)
        if old and old["poster_path"] == poster_path and (store.root / old["file"]).is_file():
            rows[movie_id] = {column: old.get(column) for column in STATUS_COLUMNS}
            if not isinstance(rows[movie_id]["sha1"], str):  # a table from before the hash was kept
                rows[movie_id]["sha1"] = content_key((store.root / old["file"]).read_bytes())
            reused += 1
            continue
        # Stored by a run that died before writing the statuses: every stored file was verified before
        # its atomic write, so it is checked again from disk, not downloaded again.
        stored = _stored_poster(store, movie_id, poster_path, min_width=min_width, min_height=min_height)
        if stored is not None:
            rows[movie_id] = stored
            reused += 1
            continue
        to_download.append((movie_id, poster_path))

    def fetch_and_verify(item: tuple[int, str]) -> dict:
        movie_id, poster_path = item
        name = poster_file_name(poster_path)
        data = client.get_bytes(f"{image_base_url.rstrip('/')}/{size}/{name}")
        try:
            poster = verify_poster(data, min_width=min_width, min_height=min_height)
        except PosterError as error:
            atomic_write_bytes(store.poster_rejected_dir / name, data)
            return _status_row(movie_id, poster_path, CORRUPT, error=str(error), size=len(data))
        target = store.poster_images_dir / name
        stored = data if poster.is_rgb_jpeg else _to_jpeg(poster.image)
        atomic_write_bytes(target, stored)
        (store.poster_rejected_dir / name).unlink(missing_ok=True)
        return _ok_row(store, movie_id, poster_path, target, poster, stored)

    results = client.map_concurrent(fetch_and_verify, to_download)
    for (movie_id, poster_path), result in settled(
        results, len(to_download), expected=(TMDbError, ValueError), progress=progress
    ):
        if isinstance(result, BaseException):
            rows[movie_id] = _status_row(movie_id, poster_path, HTTP_ERROR, error=str(result))
        else:
            rows[movie_id] = result
    frame = pd.DataFrame([rows[i] for i in sorted(rows)], columns=STATUS_COLUMNS)
    counts = Counter(frame["status"])
    summary = {status: int(counts.get(status, 0)) for status in STATUSES}
    summary.update(downloaded=len(to_download), reused=reused)
    return frame, summary


def _ok_row(store: DataStore, movie_id: int, poster_path: str, target, poster, stored: bytes) -> dict:
    """An 'ok' row: ``bytes`` and ``sha1`` are the stored file's (a converted poster differs from the download)."""
    return _status_row(
        movie_id,
        poster_path,
        OK,
        file=str(target.relative_to(store.root)),
        width=poster.image.width,
        height=poster.image.height,
        size=len(stored),
        sha1=content_key(stored),
    )


def _stored_poster(store: DataStore, movie_id: int, poster_path: str, *, min_width: int, min_height: int):
    """The 'ok' row of a poster file already in images/, if it still verifies; else None."""
    try:
        target = store.poster_images_dir / poster_file_name(poster_path)
        data = target.read_bytes()
        poster = verify_poster(data, min_width=min_width, min_height=min_height)
    except (FileNotFoundError, ValueError):  # not stored, an unusable name, or a PosterError
        return None
    return _ok_row(store, movie_id, poster_path, target, poster, data)


def _status_row(
    movie_id, poster_path, status, *, file=None, width=None, height=None, size=None, sha1=None, error=None
) -> dict:
    return {
        "id": movie_id,
        "poster_path": poster_path,
        "status": status,
        "file": file,
        "width": width,
        "height": height,
        "bytes": size,
        "sha1": sha1,
        "error": error,
    }


def _to_jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()
