"""The replay server answers with TMDb's routes, shapes and errors."""

import datetime as dt
import json

import pytest
import requests

from genre_pipeline.tmdb.replay import serve_snapshot
from genre_pipeline.tmdb.snapshot import SnapshotLayoutError, load_snapshot, normalize_release_date, write_slice

from .conftest import API_KEY, TOKEN


def get(server, path, **params):
    return requests.get(
        f"{server.api_url}{path}", params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )


def test_unauthenticated_requests_get_tmdb_status_7(replay):
    response = requests.get(f"{replay.api_url}/configuration", timeout=5)
    assert response.status_code == 401 and response.json()["status_code"] == 7
    with_key = requests.get(f"{replay.api_url}/configuration", params={"api_key": API_KEY}, timeout=5)
    assert with_key.status_code == 200


def test_discover_filters_and_sorts_like_tmdb(replay, demo_dir):
    movies = load_snapshot(demo_dir).movies.values()
    body = get(
        replay,
        "/discover/movie",
        with_genres="18",
        **{"primary_release_date.gte": "2016-01-01", "primary_release_date.lte": "2018-12-31"},
    ).json()
    expected = [m for m in movies if 18 in {g["id"] for g in m["genres"]} and "2016" <= m["release_date"][:4] <= "2018"]
    assert body["total_results"] == len(expected)
    popularity = [r["popularity"] for r in body["results"]]
    assert popularity == sorted(popularity, reverse=True)
    by_title = get(replay, "/discover/movie", primary_release_year=2017, sort_by="title.asc").json()["results"]
    assert [r["title"] for r in by_title] == sorted(r["title"] for r in by_title)


def test_discover_refuses_pages_past_500(replay):
    response = get(replay, "/discover/movie", page=501)
    assert response.status_code == 400 and response.json()["status_code"] == 22


def test_movie_details_and_404(replay):
    movie = get(replay, "/movie/900001").json()
    assert {"tagline", "genres", "poster_path", "runtime"} <= movie.keys()
    missing = get(replay, "/movie/1")
    assert missing.status_code == 404 and missing.json()["status_code"] == 34


def test_configuration_points_images_at_the_replay(replay):
    images = get(replay, "/configuration").json()["images"]
    assert images["secure_base_url"] == f"{replay.base_url}/t/p/"
    assert "w342" in images["poster_sizes"]


def test_changes_lists_movies_changed_in_the_window(catalog_copy):
    (catalog_copy / "changes.jsonl").write_text(
        json.dumps({"id": 900005, "changed_at": "2026-01-10"})
        + "\n"
        + json.dumps({"id": 900006, "changed_at": "2025-01-01"})
        + "\n"
    )
    with serve_snapshot(catalog_copy, token=TOKEN) as server:
        body = get(server, "/movie/changes", start_date="2026-01-01", end_date="2026-01-14").json()
    assert [r["id"] for r in body["results"]] == [900005]


def test_a_catalog_as_of_a_date_knows_only_what_was_released_and_changed_by_then(catalog_copy):
    movies = list(load_snapshot(catalog_copy).movies.values())
    released = sorted(m["id"] for m in movies if m["release_date"] <= "2019-12-31")
    later = next(m for m in movies if "2019-12-31" < m["release_date"] <= "2020-12-31")
    earlier = next(m for m in movies if m["release_date"] <= "2019-12-31")
    (catalog_copy / "changes.jsonl").write_text(
        json.dumps({"id": earlier["id"], "changed_at": "2019-12-20"})
        + "\n"
        + json.dumps({"id": later["id"], "changed_at": "2020-06-01"})
        + "\n"
    )

    def discovered(server) -> list[int]:
        ids, page, pages = [], 1, 1
        while page <= pages:
            body = get(server, "/discover/movie", page=page).json()
            ids += [r["id"] for r in body["results"]]
            pages, page = body["total_pages"], page + 1
        return sorted(ids)

    with serve_snapshot(catalog_copy, token=TOKEN, as_of=dt.date(2019, 12, 31)) as server:
        assert discovered(server) == released
        assert get(server, "/discover/movie", primary_release_year=2021).json()["total_results"] == 0
        assert get(server, f"/movie/{later['id']}").status_code == 404
        assert get(server, f"/movie/{earlier['id']}").status_code == 200
        window = {"start_date": "2019-12-01", "end_date": "2020-12-31"}
        assert [r["id"] for r in get(server, "/movie/changes", **window).json()["results"]] == [earlier["id"]]

        server.advance_to(dt.date(2020, 12, 31))  # a year passes
        assert get(server, f"/movie/{later['id']}").status_code == 200
        assert len(discovered(server)) > len(released)
        changed = [r["id"] for r in get(server, "/movie/changes", **window).json()["results"]]
        assert sorted(changed) == sorted([earlier["id"], later["id"]])
        with pytest.raises(ValueError, match="cannot go back"):
            server.advance_to(dt.date(2020, 1, 1))


def test_us_short_dates_are_normalized():
    assert normalize_release_date("8/8/71", 2022) == "1971-08-08"
    assert normalize_release_date("3/11/05", 2022) == "2005-03-11"
    assert normalize_release_date("2/30/99", 2022) is None
    assert normalize_release_date("2001-05-04", 2022) == "2001-05-04"


def test_a_folder_in_the_wrong_layout_is_refused(tmp_path):
    (tmp_path / "movies.jsonl").write_text("{}\n")
    with pytest.raises(SnapshotLayoutError, match="genres.json"):
        load_snapshot(tmp_path)


def test_a_slice_of_a_snapshot_keeps_its_layout_its_newest_years_and_their_posters(demo_dir, tmp_path):
    """The real-data gate's slice, on the demo catalog: the sample holds the share of the newest years it
    was asked for, every poster its movies name, the genre list and configuration, and lines unchanged."""
    target = write_slice(demo_dir, tmp_path / "slice", movies=60, recent_years=2, recent_share=0.25, seed=3)
    source, sliced = load_snapshot(demo_dir), load_snapshot(target)
    assert len(sliced.movies) == 60 and set(sliced.movies) <= set(source.movies)
    recent = [m for m in sliced.movies.values() if int(m["release_date"][:4]) >= 2023]
    assert len(recent) == 15
    posters = {m["poster_path"].lstrip("/") for m in sliced.movies.values() if m.get("poster_path")}
    assert posters and posters == {p.name for p in (target / "posters").iterdir()}
    assert sliced.genres == source.genres and sliced.configuration == source.configuration
    original = {json.loads(line)["id"]: line for line in (demo_dir / "movies.jsonl").read_text().splitlines()}
    assert all(original[json.loads(line)["id"]] == line for line in (target / "movies.jsonl").read_text().splitlines())
