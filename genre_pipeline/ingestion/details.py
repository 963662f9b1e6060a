"""The per-movie re-query: /movie/{id} for every discovered movie (tagline, full genres, poster_path)."""

from __future__ import annotations

import dataclasses
from typing import Iterable

from genre_pipeline.ingestion.results import Progress, settled
from genre_pipeline.tmdb.client import TMDbClient, TMDbError, TMDbNotFound


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
    results = client.map_concurrent(lambda i: client.get_json(f"/movie/{i}", use_cache=i not in refetch_ids), to_fetch)
    for movie_id, result in settled(results, len(to_fetch), expected=(TMDbError,), progress=progress):
        if isinstance(result, TMDbNotFound):
            not_found.append(movie_id)
        elif isinstance(result, TMDbError):
            failed[movie_id] = str(result)
        else:
            details[movie_id] = result
    return DetailsResult(
        details, len(to_fetch) - len(failed) - len(not_found), len(movie_ids) - len(to_fetch), sorted(not_found), failed
    )
