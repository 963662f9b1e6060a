"""TMDb ingestion steps as plain functions: discover pages, detail re-query, poster download.

Each step takes a TMDbClient (and, for posters, a DataStore) and knows nothing of Dagster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from collections import Counter
from typing import Callable, Iterable

import pandas as pd

from genre_pipeline.posters import PosterError, verify_poster
from genre_pipeline.store import POSTER_STATUS_COLUMNS, DataStore
from genre_pipeline.tmdb.client import TMDbAuthError, TMDbClient, TMDbError, TMDbNotFound, atomic_write_bytes

MAX_DISCOVER_RESULTS = 10_000  # TMDb serves pages 1..500 of 20 results
POSTER_STATUSES = ("ok", "no_poster", "http_error", "corrupt")
Progress = Callable[[int, int], None]


# --- discover ----------------------------------------------------------------------
@dataclasses.dataclass
class DiscoverResult:
    year: int
    pages: list[dict]  # {"params": ..., "body": raw TMDb page}
    movie_ids: list[int]
    queries: int


def _discover_query(client: TMDbClient, params: dict, *, use_cache: bool) -> list[dict]:
    """All pages of one /discover/movie query; pages after the first are fetched concurrently."""
    first = client.get_json("/discover/movie", {**params, "page": 1}, use_cache=use_cache)
    pages = [{"params": {**params, "page": 1}, "body": first}]
    last_page = min(int(first.get("total_pages") or 0), MAX_DISCOVER_RESULTS // 20)
    more = [{**params, "page": page} for page in range(2, last_page + 1)]
    fetched = {}
    for page_params, result in client.map_concurrent(
        lambda p: client.get_json("/discover/movie", p, use_cache=use_cache), more
    ):
        if isinstance(result, BaseException):
            raise result
        fetched[page_params["page"]] = {"params": page_params, "body": result}
    return pages + [fetched[page] for page in sorted(fetched)]


def _discover_window(client: TMDbClient, base: dict, start: dt.date, end: dt.date, *, use_cache: bool) -> list[dict]:
    """Discover movies released in [start, end], halving the window while TMDb's 10,000-result cap cuts it."""
    params = {**base, "primary_release_date.gte": start.isoformat(), "primary_release_date.lte": end.isoformat()}
    first = client.get_json("/discover/movie", {**params, "page": 1}, use_cache=use_cache)
    if int(first.get("total_results") or 0) > MAX_DISCOVER_RESULTS and start < end:
        middle = start + (end - start) // 2
        return _discover_window(client, base, start, middle, use_cache=use_cache) + _discover_window(
            client, base, middle + dt.timedelta(days=1), end, use_cache=use_cache
        )
    return _discover_query(client, params, use_cache=use_cache)


def discover_year(
    client: TMDbClient,
    year: int,
    *,
    sort_by: str = "popularity.desc",
    augment_genre_ids: Iterable[int] = (),
    use_cache: bool = True,
) -> DiscoverResult:
    """Page through /discover/movie for one release year, plus one query per augmented genre."""
    base = {"sort_by": sort_by, "include_adult": "false", "primary_release_year": year}
    pages = _discover_query(client, base, use_cache=use_cache)
    total = int(pages[0]["body"].get("total_results") or 0)
    if total > MAX_DISCOVER_RESULTS:
        # The year is larger than one query can page through: split it by release date.
        window_base = {k: v for k, v in base.items() if k != "primary_release_year"}
        pages = _discover_window(client, window_base, dt.date(year, 1, 1), dt.date(year, 12, 31), use_cache=use_cache)
    for genre_id in augment_genre_ids:
        pages += _discover_query(client, {**base, "with_genres": genre_id}, use_cache=use_cache)
    movie_ids = list(dict.fromkeys(r["id"] for page in pages for r in page["body"].get("results", [])))
    queries = len({json.dumps({k: v for k, v in p["params"].items() if k != "page"}, sort_keys=True) for p in pages})
    return DiscoverResult(year, pages, movie_ids, queries)


# --- changes -----------------------------------------------------------------------
def changed_movie_ids(client: TMDbClient, start: dt.date, end: dt.date) -> set[int]:
    """Ids from /movie/changes over [start, end], in TMDb's windows of at most 14 days."""
    changed: set[int] = set()
    window_start = start
    while window_start <= end:
        window_end = min(end, window_start + dt.timedelta(days=13))
        page, total_pages = 1, 1
        while page <= total_pages:
            body = client.get_json(
                "/movie/changes",
                {"start_date": window_start.isoformat(), "end_date": window_end.isoformat(), "page": page},
                use_cache=False,
            )
            changed.update(item["id"] for item in body.get("results", []))
            total_pages = int(body.get("total_pages") or 1)
            page += 1
        window_start = window_end + dt.timedelta(days=1)
    return changed


# --- details -----------------------------------------------------------------------
@dataclasses.dataclass
class DetailsResult:
    details: dict[int, dict]
    fetched: int
    reused: int
    not_found: list[int]
    failed: dict[int, str]


def fetch_details(
    client: TMDbClient,
    movie_ids: Iterable[int],
    *,
    known: dict[int, dict],
    refetch_ids: set[int] = frozenset(),
    progress: Progress | None = None,
) -> DetailsResult:
    """Details for every id: reuse ``known`` ones unless in ``refetch_ids``, fetch the rest.

    A movie TMDb no longer has (404) is left out and listed; a movie whose request kept
    failing is listed in ``failed`` and fetched again on the next run. A refused
    credential stops the whole step.
    """
    movie_ids = list(dict.fromkeys(movie_ids))
    details = {i: known[i] for i in movie_ids if i in known and i not in refetch_ids}
    to_fetch = [i for i in movie_ids if i not in details]
    not_found, failed = [], {}
    for done, (movie_id, result) in enumerate(
        client.map_concurrent(lambda i: client.get_json(f"/movie/{i}", use_cache=i not in refetch_ids), to_fetch),
        start=1,
    ):
        if isinstance(result, TMDbAuthError):
            raise result
        if isinstance(result, TMDbNotFound):
            not_found.append(movie_id)
        elif isinstance(result, TMDbError):
            failed[movie_id] = str(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            details[movie_id] = result
        if progress:
            progress(done, len(to_fetch))
    return DetailsResult(
        details, len(to_fetch) - len(failed) - len(not_found), len(movie_ids) - len(to_fetch), sorted(not_found), failed
    )


# --- posters -----------------------------------------------------------------------
def poster_file_name(poster_path: str) -> str:
    name = poster_path.rsplit("/", 1)[-1]
    if not name or name.startswith("."):
        raise ValueError(f"unusable poster_path {poster_path!r}")
    return name


def download_posters(
    client: TMDbClient,
    store: DataStore,
    movies: Iterable[dict],
    *,
    image_base_url: str,
    size: str = "w342",
    min_width: int = 32,
    min_height: int = 32,
    previous: pd.DataFrame | None = None,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Download, verify and store each movie's poster; return a status row per movie and counts.

    A poster already stored and verified for the same poster_path is kept without a
    request. Bytes that fail verification go to ``rejected/`` and never to ``images/``.
    """
    previous_ok = {}
    if previous is not None and len(previous):
        for row in previous[previous["status"] == "ok"].itertuples():
            previous_ok[int(row.id)] = row._asdict()
    rows: dict[int, dict] = {}
    to_download = []
    reused = 0
    for movie in movies:
        movie_id, poster_path = int(movie["id"]), movie.get("poster_path")
        if not poster_path:
            rows[movie_id] = _status_row(movie_id, None, "no_poster")
            continue
        old = previous_ok.get(movie_id)
        if old and old["poster_path"] == poster_path and (store.root / old["file"]).is_file():
            rows[movie_id] = {column: old[column] for column in POSTER_STATUS_COLUMNS}
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
            return _status_row(movie_id, poster_path, "corrupt", error=str(error), size=len(data))
        target = store.poster_images_dir / name
        stored = data if poster.is_rgb_jpeg else _to_jpeg(poster.image)
        atomic_write_bytes(target, stored)
        (store.poster_rejected_dir / name).unlink(missing_ok=True)
        return _ok_row(store, movie_id, poster_path, target, poster, len(stored))

    for done, (item, result) in enumerate(client.map_concurrent(fetch_and_verify, to_download), start=1):
        movie_id, poster_path = item
        if isinstance(result, TMDbAuthError):
            raise result
        if isinstance(result, (TMDbError, ValueError)):
            rows[movie_id] = _status_row(movie_id, poster_path, "http_error", error=str(result))
        elif isinstance(result, BaseException):
            raise result
        else:
            rows[movie_id] = result
        if progress:
            progress(done, len(to_download))
    frame = pd.DataFrame([rows[i] for i in sorted(rows)], columns=POSTER_STATUS_COLUMNS)
    counts = Counter(frame["status"])
    summary = {status: int(counts.get(status, 0)) for status in POSTER_STATUSES}
    summary.update(downloaded=len(to_download), reused=reused)
    return frame, summary


def _ok_row(store: DataStore, movie_id: int, poster_path: str, target, poster, stored_bytes: int) -> dict:
    """An 'ok' row: ``bytes`` is the stored file's size (a converted poster differs from the download)."""
    return _status_row(
        movie_id,
        poster_path,
        "ok",
        file=str(target.relative_to(store.root)),
        width=poster.image.width,
        height=poster.image.height,
        size=stored_bytes,
    )


def _stored_poster(store: DataStore, movie_id: int, poster_path: str, *, min_width: int, min_height: int):
    """The 'ok' row of a poster file already in images/, if it still verifies; else None."""
    try:
        target = store.poster_images_dir / poster_file_name(poster_path)
        data = target.read_bytes()
        poster = verify_poster(data, min_width=min_width, min_height=min_height)
    except (FileNotFoundError, ValueError):  # not stored, an unusable name, or a PosterError
        return None
    return _ok_row(store, movie_id, poster_path, target, poster, len(data))


def _status_row(movie_id, poster_path, status, *, file=None, width=None, height=None, size=None, error=None) -> dict:
    return {
        "id": movie_id,
        "poster_path": poster_path,
        "status": status,
        "file": file,
        "width": width,
        "height": height,
        "bytes": size,
        "error": error,
    }


def _to_jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()
