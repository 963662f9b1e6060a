"""Ingestion assets: TMDb configuration and genres, discover pages per release year, details, posters."""

import datetime as dt
import time
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from genre_pipeline import settings
from genre_pipeline.defs.automation import ON_UPSTREAM_DATA_CHANGE, TMDB_FRESHNESS, TMDB_RETRY
from genre_pipeline.defs.common import config_from_dataclass, markdown_table, progress_logger, to_dataclass
from genre_pipeline.defs.execution import TMDB_POOL
from genre_pipeline.defs.resources import StorageResource, TMDbResource
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.ingestion.details import fetch_details
from genre_pipeline.ingestion.discover import changed_movie_ids, discover_year
from genre_pipeline.store import content_fingerprint

SOURCE = settings.configured_source()
FIRST_YEAR, LAST_YEAR = settings.year_range(SOURCE)
# end_offset=1: the year in progress is a partition too, so that a refresh finds this year's releases.
RELEASE_YEARS = dg.TimeWindowPartitionsDefinition(
    start=str(FIRST_YEAR), end=str(LAST_YEAR + 1), cron_schedule="0 0 1 1 *", fmt="%Y", end_offset=1
)
MAX_CHANGES_LOOKBACK_DAYS = 90


class RefreshConfig(dg.Config):
    refresh: bool = Field(default=False, description="Ask TMDb again instead of answering from the cache.")


class DiscoverConfig(RefreshConfig):
    sort_by: str = "popularity.desc"
    augment_genre_ids: list[int] = Field(
        default_factory=list,
        description="Extra with_genres queries per year for rare genres (the original study's augmentation), "
        "e.g. [37, 10752].",
    )


class MovieDetailsConfig(dg.Config):
    check_changes: bool = Field(default=False, description="Re-fetch known movies that /movie/changes lists.")
    max_failed_fraction: float = Field(default=0.01, description="Fail when more detail requests than this fail.")


PostersConfig = config_from_dataclass(poster_files.PosterRules, "PostersConfig")


def _client_metadata(tmdb: TMDbResource, client, started: float) -> dict:
    stats = client.stats.as_dict()
    return {
        "source": tmdb.source_label,
        "requests": stats["requests"],
        "cache_hits": stats["cache_hits"],
        "retries": stats["retries"],
        "retries_by_reason": dg.MetadataValue.json(stats["retry_reasons"]),
        "failures_by_kind": dg.MetadataValue.json(stats["failures"]),
        "elapsed_s": round(time.monotonic() - started, 2),
    }


def _fetch_reference(
    path: str, target: Path, config: RefreshConfig, tmdb: TMDbResource, storage: StorageResource
) -> tuple[dict, dict]:
    store, started = storage.store, time.monotonic()
    with tmdb.open_client(store) as client:
        payload = client.get_json(path, use_cache=not config.refresh)
        metadata = _client_metadata(tmdb, client, started)
    store.write_json(target, payload)
    return payload, metadata


@dg.asset(group_name="ingestion", retry_policy=TMDB_RETRY, pool=TMDB_POOL, kinds={"python"})
def tmdb_configuration(config: RefreshConfig, tmdb: TMDbResource, storage: StorageResource) -> dg.MaterializeResult:
    """TMDb's /configuration: image base URLs and the poster sizes it serves."""
    payload, metadata = _fetch_reference("/configuration", storage.store.tmdb_configuration_file, config, tmdb, storage)
    images = payload.get("images", {})
    return dg.MaterializeResult(
        metadata={**metadata, "poster_sizes": ", ".join(images.get("poster_sizes", []))},
        data_version=dg.DataVersion(content_fingerprint(images.get("poster_sizes", []))),
    )


@dg.asset(group_name="ingestion", retry_policy=TMDB_RETRY, pool=TMDB_POOL, kinds={"python"})
def tmdb_genres(config: RefreshConfig, tmdb: TMDbResource, storage: StorageResource) -> dg.MaterializeResult:
    """TMDb's movie genre list (/genre/movie/list): ids and names."""
    payload, metadata = _fetch_reference("/genre/movie/list", storage.store.tmdb_genres_file, config, tmdb, storage)
    genres = pd.DataFrame(payload.get("genres", []))
    return dg.MaterializeResult(
        metadata={**metadata, "genres": len(genres), "preview": markdown_table(genres, 25)},
        data_version=dg.DataVersion(content_fingerprint(payload)),
    )


@dg.asset(
    group_name="ingestion",
    partitions_def=RELEASE_YEARS,
    retry_policy=TMDB_RETRY,
    freshness_policy=TMDB_FRESHNESS,
    pool=TMDB_POOL,
    kinds={"python"},
)
def raw_discover_pages(
    context: dg.AssetExecutionContext, config: DiscoverConfig, tmdb: TMDbResource, storage: StorageResource
) -> dg.MaterializeResult:
    """Every /discover/movie page for each release year, stored exactly as TMDb returned it."""
    store, started = storage.store, time.monotonic()
    years = [int(key) for key in context.partition_keys]
    rows, ids_by_year = [], {}
    with tmdb.open_client(store) as client:
        for year in years:
            result = discover_year(
                client,
                year,
                sort_by=config.sort_by,
                augment_genre_ids=config.augment_genre_ids,
                use_cache=not config.refresh,
            )
            store.write_discover_pages(year, result.pages)
            ids_by_year[year] = sorted(result.movie_ids)
            rows.append(
                {"year": year, "movies": len(result.movie_ids), "pages": len(result.pages), "queries": result.queries}
            )
            context.log.info(f"{year}: {len(result.movie_ids)} movies on {len(result.pages)} pages")
        metadata = _client_metadata(tmdb, client, started)
    per_year = pd.DataFrame(rows)
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "years": len(years),
            "movies": int(per_year["movies"].sum()),
            "pages": int(per_year["pages"].sum()),
            "per_year": markdown_table(per_year, None),
        },
        # The data version follows the discovered ids, not volatile fields like popularity.
        data_version=dg.DataVersion(content_fingerprint(ids_by_year)),
    )


@dg.asset(
    group_name="ingestion",
    deps=[raw_discover_pages],
    retry_policy=TMDB_RETRY,
    freshness_policy=TMDB_FRESHNESS,
    pool=TMDB_POOL,
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"python"},
)
def movie_details(
    context: dg.AssetExecutionContext, config: MovieDetailsConfig, tmdb: TMDbResource, storage: StorageResource
) -> dg.MaterializeResult:
    """/movie/{id} for every discovered movie (tagline, full genres, poster_path, runtime). Incremental."""
    store, started = storage.store, time.monotonic()
    discovered = store.discovered_movies()
    known = store.read_details()
    state = store.read_json(store.details_state_file, {})
    today = tmdb.today()

    progress = progress_logger(context, "details fetched")

    with tmdb.open_client(store) as client:
        changed: set[int] = set()
        if config.check_changes and known:
            since = dt.date.fromisoformat(state.get("last_changes_check", (today - dt.timedelta(days=1)).isoformat()))
            since = max(since, today - dt.timedelta(days=MAX_CHANGES_LOOKBACK_DAYS))
            changed = changed_movie_ids(client, since, today) & known.keys()
            state["last_changes_check"] = today.isoformat()
        result = fetch_details(client, discovered, known=known, refetch_ids=changed, progress=progress)
        metadata = _client_metadata(tmdb, client, started)
    # Keep every detail fetched so far, even if the step then fails: nothing is fetched twice.
    store.write_details(result.details)
    state.update(not_found=result.not_found, failed=sorted(result.failed))
    store.write_json(store.details_state_file, state)
    if discovered and len(result.failed) > config.max_failed_fraction * len(discovered):
        raise dg.Failure(
            f"{len(result.failed)} of {len(discovered)} detail requests failed after retries; "
            f"the {len(result.details)} fetched are kept and the rest are fetched on the next run",
            metadata={"failed_examples": dg.MetadataValue.json(dict(list(result.failed.items())[:5]))},
        )
    frame = pd.DataFrame(result.details.values(), columns=["id", "title", "release_date", "tagline", "runtime"])
    with_tagline = int(frame["tagline"].fillna("").str.strip().astype(bool).sum()) if len(frame) else 0
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "movies": len(result.details),
            "fetched": result.fetched,
            "reused": result.reused,
            "changed_refetched": len(changed),
            "not_found": len(result.not_found),
            "failed": len(result.failed),
            "with_tagline": with_tagline,
            "preview": markdown_table(frame, 10),
        },
        data_version=dg.DataVersion(content_fingerprint([result.details[i] for i in sorted(result.details)])),
    )


@dg.asset(
    group_name="ingestion",
    deps=[movie_details, tmdb_configuration],
    retry_policy=TMDB_RETRY,
    pool=TMDB_POOL,
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"python"},
)
def posters(
    context: dg.AssetExecutionContext, config: PostersConfig, tmdb: TMDbResource, storage: StorageResource
) -> dg.MaterializeResult:
    """Each movie's poster, downloaded, verified with PIL and stored, with a status per movie."""
    store, started = storage.store, time.monotonic()
    configuration = store.read_json(store.tmdb_configuration_file, {})
    sizes = configuration.get("images", {}).get("poster_sizes", [])
    if sizes and config.size not in sizes:
        raise dg.Failure(f"poster size {config.size!r} is not one TMDb serves: {', '.join(sizes)}", allow_retries=False)
    details = store.read_details()

    progress = progress_logger(context, "posters downloaded and verified")

    with tmdb.open_client(store) as client:
        base = client.image_base_url or configuration.get("images", {}).get("secure_base_url")
        if not base:
            raise dg.Failure("no image base URL: materialize tmdb_configuration first", allow_retries=False)
        frame, summary = poster_files.download_posters(
            client,
            store,
            details.values(),
            image_base_url=base,
            rules=to_dataclass(poster_files.PosterRules, config),
            previous=poster_files.read_statuses(store),
            progress=progress,
        )
        metadata = _client_metadata(tmdb, client, started)
    poster_files.write_statuses(store, frame)
    failures = frame[frame["status"].isin([poster_files.HTTP_ERROR, poster_files.CORRUPT])]
    return dg.MaterializeResult(
        metadata={
            **metadata,
            **{f"status_{status}": count for status, count in summary.items()},
            "failures_preview": markdown_table(failures[["id", "poster_path", "status", "error"]], 10),
        },
        data_version=dg.DataVersion(
            content_fingerprint(frame[["id", "poster_path", "status"]].astype(str).values.tolist())
        ),
    )


@dg.asset_check(asset=movie_details, description="Every discovered movie has details, or TMDb said it is gone.")
def details_cover_discovered(storage: StorageResource) -> dg.AssetCheckResult:
    store = storage.store
    discovered = store.discovered_movies().keys()
    state = store.read_json(store.details_state_file, {})
    missing = set(discovered) - store.read_details().keys() - set(state.get("not_found", []))
    return dg.AssetCheckResult(
        passed=not missing, metadata={"missing": len(missing), "examples": dg.MetadataValue.json(sorted(missing)[:10])}
    )


@dg.asset_check(asset=posters, description="Every 'ok' poster is a stored file; nothing else is in images/.")
def posters_stored_as_recorded(storage: StorageResource) -> dg.AssetCheckResult:
    store = storage.store
    frame = poster_files.read_statuses(store)
    ok_files = {store.root / f for f in frame.loc[frame["status"] == poster_files.OK, "file"]}
    missing = [str(f) for f in ok_files if not f.is_file()]
    stray = (
        [p.name for p in store.poster_images_dir.glob("*") if p not in ok_files]
        if store.poster_images_dir.is_dir()
        else []
    )
    return dg.AssetCheckResult(
        passed=not missing and not stray,
        metadata={"ok": len(ok_files), "missing_files": len(missing), "unrecorded_files": len(stray)},
    )
