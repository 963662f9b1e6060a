"""How an ingestion step walks the results of concurrent requests."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from genre_pipeline.tmdb.client import TMDbAuthError

Progress = Callable[[int, int], None]


def settled(
    results: Iterable[tuple],
    total: int,
    *,
    expected: tuple[type[BaseException], ...],
    progress: Progress | None = None,
) -> Iterator[tuple]:
    """Each (item, result) of ``TMDbClient.map_concurrent``, where result is a value or an ``expected``
    error for the step to record. A refused credential stops the step (no other request can succeed),
    and so does any unexpected error."""
    for done, (item, result) in enumerate(results, start=1):
        if isinstance(result, TMDbAuthError) or (
            isinstance(result, BaseException) and not isinstance(result, expected)
        ):
            raise result
        yield item, result
        if progress:
            progress(done, total)
