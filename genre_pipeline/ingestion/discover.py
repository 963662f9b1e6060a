"""Every /discover/movie page of a release year, and the ids /movie/changes lists."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Iterable

from genre_pipeline.ingestion.results import settled
from genre_pipeline.tmdb.client import TMDbClient

MAX_DISCOVER_RESULTS = 10_000  # TMDb serves pages 1..500 of 20 results


@dataclasses.dataclass
class DiscoverResult:
    year: int
    pages: list[dict]  # {"params": ..., "body": raw TMDb page}
    movie_ids: list[int]
    queries: int


def _discover_query(client: TMDbClient, params: dict, *, use_cache: bool, first: dict | None = None) -> list[dict]:
    """All pages of one /discover/movie query (``first``: its page 1, when the caller already has it);
    pages after the first are fetched concurrently. Any failure stops the query: a year with a
    missing page would look smaller than it is."""
    if first is None:
        first = client.get_json("/discover/movie", {**params, "page": 1}, use_cache=use_cache)
    pages = [{"params": {**params, "page": 1}, "body": first}]
    last_page = min(int(first.get("total_pages") or 0), MAX_DISCOVER_RESULTS // 20)
    more = [{**params, "page": page} for page in range(2, last_page + 1)]
    results = client.map_concurrent(lambda p: client.get_json("/discover/movie", p, use_cache=use_cache), more)
    fetched = {p["page"]: {"params": p, "body": body} for p, body in settled(results, len(more), expected=())}
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
    return _discover_query(client, params, use_cache=use_cache, first=first)


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
    first = client.get_json("/discover/movie", {**base, "page": 1}, use_cache=use_cache)
    if int(first.get("total_results") or 0) > MAX_DISCOVER_RESULTS:
        # The year is larger than one query can page through: split it by release date (without first
        # paging through the 500 pages the capped query would serve).
        window_base = {k: v for k, v in base.items() if k != "primary_release_year"}
        pages = _discover_window(client, window_base, dt.date(year, 1, 1), dt.date(year, 12, 31), use_cache=use_cache)
    else:
        pages = _discover_query(client, base, use_cache=use_cache, first=first)
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
