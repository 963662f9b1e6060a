"""The replay server answers with TMDb's routes, shapes and errors."""

import json

import pytest
import requests

from genre_pipeline.tmdb.replay import serve_snapshot
from genre_pipeline.tmdb.snapshot import SnapshotLayoutError, load_snapshot, normalize_release_date

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


def test_us_short_dates_are_normalized():
    assert normalize_release_date("8/8/71", 2022) == "1971-08-08"
    assert normalize_release_date("3/11/05", 2022) == "2005-03-11"
    assert normalize_release_date("2/30/99", 2022) is None
    assert normalize_release_date("2001-05-04", 2022) == "2001-05-04"


def test_a_folder_in_the_wrong_layout_is_refused(tmp_path):
    (tmp_path / "movies.jsonl").write_text("{}\n")
    with pytest.raises(SnapshotLayoutError, match="genres.json"):
        load_snapshot(tmp_path)
