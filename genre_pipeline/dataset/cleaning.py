"""One clean row per movie, with every dropped row counted by the rule that dropped it."""

from __future__ import annotations

import dataclasses
import re
import unicodedata

import pandas as pd

from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.options import described

CLEAN_COLUMNS = [
    "id",
    "title",
    "release_year",
    "overview",
    "tagline",
    "text",
    "overview_tokens",
    "poster_file",
    "poster_sha1",
    "poster_status",
    "genres",
    "popularity",
    "original_language",
    "runtime",
    "vote_average",
    "vote_count",
]
# What the models may read of a /movie/{id} response besides text and poster (never its genres).
METADATA_COLUMNS = ("original_language", "runtime", "release_year", "vote_average", "vote_count")
_TOKEN = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


@dataclasses.dataclass(frozen=True)
class CleaningRules:
    """Which movies the cleaned data set keeps. Declared once, here: the movies_clean asset's run config
    is made from these fields."""

    require_tagline: bool = described(False, "Drop movies without a tagline (the original study's rule).")
    min_overview_tokens: int = described(5, "Drop shorter overviews.")
    max_overview_tokens: int = described(300, "Drop longer overviews.")


@dataclasses.dataclass
class CleaningResult:
    movies: pd.DataFrame
    dropped: dict[str, int]  # rule -> rows it dropped, in the order the rules run
    rows_in: int
    kept_by_tagline_policy: dict[str, int]  # rows kept with and without require_tagline


def normalize_text(text: str | None) -> str:
    """NFKC, no control characters, single spaces."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", str(text))
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    return " ".join(text.split())


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def model_text(overview: str, tagline: str) -> str:
    """The text a model reads: overview, then the tagline unless the overview already contains it."""
    if tagline and tagline.lower() not in overview.lower():
        return f"{overview} {tagline}"
    return overview


def release_year(release_date: str | None) -> int | None:
    """The year of a TMDb ``release_date`` (YYYY-MM-DD), or None."""
    head = (release_date or "")[:4]
    return int(head) if head.isdigit() else None


def metadata_fields(movie: dict) -> dict:
    """The metadata columns of one ``/movie/{id}`` response; None where TMDb has no value."""
    return {
        "original_language": movie.get("original_language") or None,
        "runtime": movie.get("runtime"),
        "release_year": release_year(movie.get("release_date")),
        "vote_average": movie.get("vote_average"),
        "vote_count": movie.get("vote_count"),
    }


def details_frame(details: list[dict], poster_status: pd.DataFrame) -> pd.DataFrame:
    """Raw /movie/{id} records and poster statuses as one frame, before any rule runs."""
    rows = []
    for movie in details:
        rows.append(
            {
                "id": int(movie["id"]),
                "title": normalize_text(movie.get("title")),
                "overview": normalize_text(movie.get("overview")),
                "tagline": normalize_text(movie.get("tagline")),
                "genres": [g["name"] for g in movie.get("genres") or []],
                "popularity": float(movie.get("popularity") or 0.0),
                **metadata_fields(movie),
            }
        )
    columns = ["id", "title", "overview", "tagline", "genres", "popularity", *METADATA_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    names = {"status": "poster_status", "file": "poster_file", "sha1": "poster_sha1"}
    status = (
        poster_status.reindex(columns=["id", *names]).rename(columns=names)
        if len(poster_status)
        else pd.DataFrame(columns=["id", *names.values()])
    )
    status = status.astype({"id": "int64"})
    frame = frame.merge(status, on="id", how="left")
    frame["poster_status"] = frame["poster_status"].fillna(poster_files.NOT_DOWNLOADED)
    for column in ("poster_file", "poster_sha1"):
        frame[column] = frame[column].where(frame["poster_status"] == poster_files.OK, None)
    return frame


def clean_movies(frame: pd.DataFrame, rules: CleaningRules | None = None) -> CleaningResult:
    """Apply the rules in order; each row is counted under the first rule that drops it."""
    rules = rules or CleaningRules()
    rows_in = len(frame)
    frame = frame.copy()
    frame["overview_tokens"] = frame["overview"].map(count_tokens)
    dropped: dict[str, int] = {}

    def drop(rule: str, mask: pd.Series) -> None:
        nonlocal frame
        dropped[rule] = int(mask.sum())
        frame = frame[~mask]

    drop("duplicate_id", frame.duplicated("id", keep="first"))
    # Remakes and re-releases share a title and year; keep the most popular one.
    frame = frame.sort_values(["popularity", "id"], ascending=[False, True], kind="stable")
    title_key = frame["title"].str.casefold()
    drop(
        "duplicate_title_year",
        pd.Series(
            pd.DataFrame({"t": title_key, "y": frame["release_year"]}).duplicated(keep="first").values,
            index=frame.index,
        ),
    )
    drop("no_overview", frame["overview"] == "")
    drop("no_genres", frame["genres"].map(len) == 0)
    has_tagline = frame["tagline"] != ""
    drop("no_tagline", ~has_tagline if rules.require_tagline else pd.Series(False, index=frame.index))
    drop("overview_too_short", frame["overview_tokens"] < rules.min_overview_tokens)
    drop("overview_too_long", frame["overview_tokens"] > rules.max_overview_tokens)

    frame = frame.sort_values("id").reset_index(drop=True)
    frame["text"] = [model_text(o, t) for o, t in zip(frame["overview"], frame["tagline"])]
    # What the other tagline policy would have kept, for the report.
    if rules.require_tagline:
        kept = {"require_tagline": len(frame), "keep_without_tagline": len(frame) + dropped["no_tagline"]}
    else:
        kept = {"require_tagline": int((frame["tagline"] != "").sum()), "keep_without_tagline": len(frame)}
    return CleaningResult(frame[CLEAN_COLUMNS], dropped, rows_in, kept)
