"""The built-in demo catalog: a small SYNTHETIC snapshot the project generates itself.

It is laid out like ``../shared/data/tmdb-snapshot`` so that the replay server serves it
with TMDb's routes. Overviews, taglines and posters are generated from each movie's
genres, so a model can learn from them; nothing in it is real TMDb data. Generation is
seeded: the same version and seed always give the same files.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from genre_pipeline.files import atomic_write_bytes
from genre_pipeline.tmdb.demo_vocabulary import FILLER, TAGLINES, TITLE_WORDS, WORDS

CATALOG_VERSION = "3"
DEMO_LABEL = "demo catalog (synthetic data)"
FIRST_YEAR, LAST_YEAR = 2015, 2024
DEFAULT_MOVIES = 360

# Like the real snapshot, the newest release years have few posters and taglines (TMDb's data sets
# were gathered before those movies had them): a model or evaluation that needs a poster meets years
# without one here first, not on real data.
POSTER_SHARE = {2021: 0.6, 2022: 0.3, 2023: 0.05, 2024: 0.0}  # other years: 0.95
TAGLINE_SHARE = {2021: 0.2, 2022: 0.1, 2023: 0.0, 2024: 0.0}  # other years: 0.5
# Non-English movies: most described in English, some in their own language with no genre word a
# model trained on English reads.
LANGUAGES = {"fr": 0.04, "es": 0.04, "ja": 0.03, "ko": 0.02, "de": 0.02}
OWN_LANGUAGE_SHARE = 0.3
OWN_LANGUAGE_OVERVIEWS = {
    "fr": "Une histoire inoubliable, entre les souvenirs d'une famille et les secrets de {title}.",
    "es": "Una historia inolvidable sobre los recuerdos de una familia y los secretos de {title}.",
    "ja": "ある家族の記憶と「{title}」の秘密をめぐる、忘れられない物語。",
    "ko": "한 가족의 기억과 {title}의 비밀을 둘러싼 잊을 수 없는 이야기.",
    "de": "Eine unvergessliche Geschichte über die Erinnerungen einer Familie und die Geheimnisse von {title}.",
}

# TMDb's own genre list (GET /3/genre/movie/list).
TMDB_GENRES = [
    (28, "Action"),
    (12, "Adventure"),
    (16, "Animation"),
    (35, "Comedy"),
    (80, "Crime"),
    (99, "Documentary"),
    (18, "Drama"),
    (10751, "Family"),
    (14, "Fantasy"),
    (36, "History"),
    (27, "Horror"),
    (10402, "Music"),
    (9648, "Mystery"),
    (10749, "Romance"),
    (878, "Science Fiction"),
    (10770, "TV Movie"),
    (53, "Thriller"),
    (10752, "War"),
    (37, "Western"),
]
GENRE_NAMES = dict(TMDB_GENRES)

# How often each genre leads a movie, roughly TMDb's shape: Drama and Comedy common, Western rare.
PRIMARY_WEIGHTS = {
    18: 16,
    35: 13,
    28: 9,
    53: 7,
    27: 7,
    10749: 6,
    80: 5,
    878: 5,
    16: 4,
    12: 4,
    14: 3,
    99: 3,
    9648: 3,
    10751: 3,
    10402: 2,
    36: 2,
    10752: 2,
    37: 1,
    10770: 1,
}
# Genres that tend to come with the leading one.
COMPANIONS = {
    28: [12, 53, 878, 80],
    12: [28, 14, 10751],
    16: [10751, 35, 12, 14],
    35: [10749, 18, 10751],
    80: [53, 18, 9648],
    99: [36, 10402],
    18: [10749, 36, 80],
    10751: [16, 35, 12],
    14: [12, 10751, 28],
    36: [18, 10752],
    27: [53, 9648],
    10402: [18, 35],
    9648: [53, 80],
    10749: [35, 18],
    878: [28, 53, 12],
    10770: [18, 10749],
    53: [80, 9648, 28],
    10752: [36, 18, 28],
    37: [28, 18],
}
PALETTES = {
    28: ((200, 60, 20), (255, 200, 0)),
    12: ((30, 110, 60), (240, 200, 120)),
    16: ((90, 180, 250), (255, 120, 200)),
    35: ((250, 220, 60), (255, 90, 60)),
    80: ((40, 40, 50), (200, 20, 30)),
    99: ((150, 150, 140), (30, 30, 30)),
    18: ((70, 80, 110), (220, 210, 190)),
    10751: ((120, 200, 120), (255, 240, 150)),
    14: ((90, 40, 140), (200, 170, 255)),
    36: ((130, 100, 60), (230, 210, 160)),
    27: ((15, 10, 10), (150, 0, 0)),
    10402: ((180, 30, 160), (60, 230, 230)),
    9648: ((25, 35, 70), (160, 160, 200)),
    10749: ((240, 150, 180), (255, 240, 245)),
    878: ((10, 30, 80), (0, 230, 255)),
    10770: ((100, 140, 180), (250, 250, 250)),
    53: ((50, 60, 60), (230, 230, 80)),
    10752: ((80, 90, 50), (170, 150, 100)),
    37: ((200, 120, 50), (90, 50, 20)),
}


def _pick_genres(rng: random.Random) -> list[int]:
    ids, weights = zip(*PRIMARY_WEIGHTS.items())
    primary = rng.choices(ids, weights=weights)[0]
    extra = rng.choices([0, 1, 2], weights=[3, 5, 3])[0]
    companions = rng.sample(COMPANIONS[primary], k=min(extra, len(COMPANIONS[primary])))
    return [primary] + companions


def _language(rng: random.Random) -> str:
    draw, total = rng.random(), 0.0
    for language, share in LANGUAGES.items():
        total += share
        if draw < total:
            return language
    return "en"


def _overview(rng: random.Random, genres: list[int]) -> str:
    phrases = [rng.choice(WORDS[g]) for g in genres for _ in range(2 if g == genres[0] else 1)]
    rng.shuffle(phrases)
    return (
        f"{rng.choice(FILLER)} a story of {', '.join(phrases[:-1])} and {phrases[-1]}."
        if len(phrases) > 1
        else f"{rng.choice(FILLER)} a story of {phrases[0]}."
    )


def _poster(rng: random.Random, genres: list[int], title: str) -> bytes:
    background, accent = PALETTES[genres[0]]
    jitter = lambda c: tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in c)  # noqa: E731
    image = Image.new("RGB", (342, 513), jitter(background))
    draw = ImageDraw.Draw(image)
    for genre in genres:
        shade = jitter(PALETTES[genre][1])
        for _ in range(rng.randint(2, 5)):
            x, y, r = rng.randint(0, 342), rng.randint(0, 420), rng.randint(20, 90)
            if genre % 2:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=shade)
            else:
                draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=shade)
    draw.rectangle((0, 430, 342, 513), fill=jitter(accent))
    draw.text((16, 455), title.upper()[:28], fill=jitter(background))
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def generate(root: Path | str, *, n_movies: int = DEFAULT_MOVIES, seed: int = 7) -> Path:
    """Write the demo catalog to ``root`` (skipped when the same version is already there)."""
    root = Path(root)
    stamp = {"version": CATALOG_VERSION, "movies": n_movies, "seed": seed}
    marker = root / "demo_catalog.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return root
    rng = random.Random(seed)
    lines = []
    for index in range(n_movies):
        movie_id = 900_001 + index
        genres = _pick_genres(rng)
        year = FIRST_YEAR + index % (LAST_YEAR - FIRST_YEAR + 1)
        title = f"{rng.choice(TITLE_WORDS)} of the {rng.choice(TITLE_WORDS)} {rng.choice(TITLE_WORDS)}"
        has_poster = rng.random() < POSTER_SHARE.get(year, 0.95)
        language = _language(rng)
        overview = _overview(rng, genres)
        if language != "en" and rng.random() < OWN_LANGUAGE_SHARE:
            overview = OWN_LANGUAGE_OVERVIEWS[language].format(title=title)
        movie = {
            "id": movie_id,
            "title": title,
            "original_title": title,
            "overview": overview,
            "tagline": TAGLINES[genres[0]] if rng.random() < TAGLINE_SHARE.get(year, 0.5) else None,
            "genres": [{"id": g, "name": GENRE_NAMES[g]} for g in genres],
            "release_date": f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "original_language": language,
            "popularity": round(rng.uniform(1, 100), 3),
            "vote_average": round(rng.uniform(3, 9), 1),
            "vote_count": rng.randint(0, 5000),
            "runtime": rng.randint(75, 170),
            "imdb_id": None,
            "adult": False,
            "poster_path": f"/demo-{movie_id}.jpg" if has_poster else None,
        }
        # A few rows TMDb also has and the cleaning step must handle.
        if index % 97 == 5:
            movie["overview"] = ""
        if index % 131 == 7:
            movie["genres"] = []
        if has_poster:
            atomic_write_bytes(root / "posters" / f"demo-{movie_id}.jpg", _poster(rng, genres, title))
        lines.append(movie)
    # Two remakes that share title and year with an earlier movie: a duplicate to clean.
    for original in lines[10:12]:
        twin = {**original, "id": original["id"] + 50_000, "poster_path": None, "popularity": 0.5}
        lines.append(twin)
    atomic_write_bytes(root / "movies.jsonl", "".join(json.dumps(m) + "\n" for m in lines).encode())
    atomic_write_bytes(
        root / "genres.json", json.dumps({"genres": [{"id": i, "name": n} for i, n in TMDB_GENRES]}).encode()
    )
    sizes = ["w92", "w154", "w185", "w342", "w500", "w780", "original"]
    configuration = {"images": {"base_url": "", "secure_base_url": "", "poster_sizes": sizes}, "change_keys": []}
    atomic_write_bytes(root / "configuration.json", json.dumps(configuration).encode())
    atomic_write_bytes(
        root / "README.md",
        (
            "# Demo catalog (SYNTHETIC)\n\nGenerated by genre_pipeline.tmdb.demo_catalog: invented titles, "
            "overviews, taglines and posters derived from each movie's genres. Not TMDb data.\n"
        ).encode(),
    )
    atomic_write_bytes(marker, json.dumps(stamp).encode())
    return root
