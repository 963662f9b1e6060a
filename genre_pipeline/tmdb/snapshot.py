"""A folder laid out like TMDb API responses, loaded into memory.

The layout (see ``../shared/data/tmdb-snapshot/README.md``): ``movies.jsonl`` with one
``GET /3/movie/{id}`` response per line, ``genres.json``, ``configuration.json`` and
``posters/<file>.jpg`` for each ``poster_path``. An optional ``changes.jsonl`` lists
``{"id": ..., "changed_at": "YYYY-MM-DD"}`` for ``/3/movie/changes``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import re
import shutil
from collections import defaultdict
from pathlib import Path

from genre_pipeline.files import atomic_write_bytes

REQUIRED_FILES = ("movies.jsonl", "genres.json", "configuration.json")

# Fields of a /discover/movie result; TMDb's discover results carry genre_ids, no tagline.
DISCOVER_FIELDS = (
    "adult",
    "backdrop_path",
    "id",
    "original_language",
    "original_title",
    "overview",
    "popularity",
    "poster_path",
    "release_date",
    "title",
    "video",
    "vote_average",
    "vote_count",
)

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_US_SHORT_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{2})$")


class SnapshotLayoutError(ValueError):
    """The folder is not laid out like a TMDb snapshot."""


def normalize_release_date(value: str | None, latest_year: int) -> str | None:
    """Return an ISO date, or None when the value is missing or unreadable.

    Some public TMDb-derived data sets write dates as M/D/YY. A two-digit year is read
    as 20YY when that is not later than ``latest_year`` (the newest ISO year in the
    same data), else as 19YY.
    """
    if not value:
        return None
    if _ISO_DATE.match(value):
        return value
    match = _US_SHORT_DATE.match(value)
    if not match:
        return None
    month, day, short_year = (int(g) for g in match.groups())
    year = 2000 + short_year if 2000 + short_year <= latest_year else 1900 + short_year
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        return None


@dataclasses.dataclass
class Snapshot:
    root: Path
    movies: dict[int, dict]
    genres: dict
    configuration: dict
    changes: list[dict]
    dates_normalized: int

    @property
    def posters_dir(self) -> Path:
        return self.root / "posters"

    def years(self) -> list[int]:
        return sorted({int(m["release_date"][:4]) for m in self.movies.values() if m.get("release_date")})

    def discover_record(self, movie: dict) -> dict:
        record = {field: movie.get(field) for field in DISCOVER_FIELDS}
        record["adult"] = bool(movie.get("adult", False))
        record["video"] = bool(movie.get("video", False))
        record["genre_ids"] = [g["id"] for g in movie.get("genres") or []]
        return record

    def by_year(self) -> dict[int, list[dict]]:
        index: dict[int, list[dict]] = defaultdict(list)
        for movie in self.movies.values():
            if movie.get("release_date"):
                index[int(movie["release_date"][:4])].append(movie)
        return index


def check_layout(root: Path) -> Path:
    """Raise SnapshotLayoutError naming what is missing; return the resolved folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SnapshotLayoutError(f"snapshot folder {root} does not exist or is not a folder")
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise SnapshotLayoutError(
            f"{root} is not laid out like a TMDb snapshot: missing {', '.join(missing)} "
            f"(expected {', '.join(REQUIRED_FILES)} and posters/)"
        )
    return root.resolve()


def load_snapshot(root: Path | str) -> Snapshot:
    root = check_layout(Path(root))
    raw_movies = []
    with open(root / "movies.jsonl", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                movie = json.loads(line)
            except json.JSONDecodeError as error:
                raise SnapshotLayoutError(f"{root / 'movies.jsonl'} line {line_number}: {error}") from None
            if not isinstance(movie, dict) or not isinstance(movie.get("id"), int):
                raise SnapshotLayoutError(f"{root / 'movies.jsonl'} line {line_number}: no integer 'id'")
            raw_movies.append(movie)
    iso_years = [int(m["release_date"][:4]) for m in raw_movies if _ISO_DATE.match(m.get("release_date") or "")]
    latest_year = max(iso_years, default=dt.date.today().year)
    movies: dict[int, dict] = {}
    dates_normalized = 0
    for movie in raw_movies:
        original = movie.get("release_date")
        normalized = normalize_release_date(original, latest_year)
        if normalized != original and original:
            dates_normalized += 1
        movies[movie["id"]] = {**movie, "release_date": normalized}
    genres = json.loads((root / "genres.json").read_text(encoding="utf-8"))
    configuration = json.loads((root / "configuration.json").read_text(encoding="utf-8"))
    changes_file = root / "changes.jsonl"
    changes = []
    if changes_file.is_file():
        changes = [json.loads(line) for line in changes_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return Snapshot(root, movies, genres, configuration, changes, dates_normalized)


def snapshot_years(root: Path | str, record_file: Path | str | None = None) -> tuple[int, int]:
    """First and last release year in a snapshot folder. With ``record_file``, the range is read from
    there while ``movies.jsonl`` keeps the size and modification time it was recorded for: loading the
    code location (which builds the year partitions) must not parse every movie."""
    movies_file = check_layout(Path(root)) / "movies.jsonl"
    stat = movies_file.stat()
    fingerprint = {"movies_file": str(movies_file), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if record_file is not None:
        try:
            record = json.loads(Path(record_file).read_text())
            if record["of"] == fingerprint:
                return record["first"], record["last"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
            pass  # no record yet, or one from an older layout: measured again below
    years = load_snapshot(root).years()
    if not years:
        raise SnapshotLayoutError(f"{root}: no movie has a release date")
    if record_file is not None:
        atomic_write_bytes(record_file, json.dumps({"of": fingerprint, "first": years[0], "last": years[-1]}).encode())
    return years[0], years[-1]


def write_slice(
    source: Path | str,
    target: Path | str,
    *,
    movies: int,
    recent_years: int = 4,
    recent_share: float = 0.3,
    seed: int = 0,
) -> Path:
    """A smaller snapshot folder at ``target``: ``movies`` movies of ``source`` with a release date, a
    seeded sample in which the newest ``recent_years`` years hold ``recent_share`` of the movies (so that a
    temporal evaluation and a refresh a year later have real movies to work on) and the older years the
    rest; their posters, the genre list and the configuration as they are. Lines are copied unchanged."""
    snapshot = load_snapshot(source)
    newest = snapshot.years()[-1]
    dated = sorted(snapshot.by_year().items())
    recent = [m for year, group in dated if year > newest - recent_years for m in group]
    older = [m for year, group in dated if year <= newest - recent_years for m in group]
    rng = random.Random(seed)
    n_recent = min(len(recent), round(movies * recent_share))
    chosen = {m["id"] for m in rng.sample(recent, n_recent) + rng.sample(older, min(len(older), movies - n_recent))}
    target = Path(target)
    (target / "posters").mkdir(parents=True, exist_ok=True)
    lines = []
    with open(snapshot.root / "movies.jsonl", encoding="utf-8") as handle:
        for line in handle:
            movie_id = json.loads(line)["id"] if line.strip() else None
            if movie_id not in chosen:
                continue
            lines.append(line if line.endswith("\n") else line + "\n")
            poster = (snapshot.movies[movie_id].get("poster_path") or "").lstrip("/")
            if poster and (snapshot.posters_dir / poster).is_file():
                shutil.copyfile(snapshot.posters_dir / poster, target / "posters" / poster)
    atomic_write_bytes(target / "movies.jsonl", "".join(lines).encode())
    for name in ("genres.json", "configuration.json"):
        shutil.copyfile(snapshot.root / name, target / name)
    return target
