"""The command line: `dagster asset materialize` against the demo catalog, and `genre-pipeline`."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from genre_pipeline.tmdb.snapshot import load_snapshot

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(args, env, timeout=300):
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_dagster_cli_materializes_every_asset_like_make_run(demo_dir, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "GENRE_PIPELINE_DATA": str(tmp_path / "data"),
        "GENRE_PIPELINE_SNAPSHOT": str(demo_dir),
        "GENRE_PIPELINE_YEARS": "2015-2024",
    }
    for name in ("TMDB_API_READ_ACCESS_TOKEN", "TMDB_API_KEY", "TMDB_BASE_URL"):
        env.pop(name, None)
    years = run([BIN / "genre-pipeline", "years"], env).stdout.strip()
    assert years == "2015...2024"
    materialize = [BIN / "dagster", "asset", "materialize", "-m", "genre_pipeline.definitions"]
    run(materialize + ["--select", "tmdb_configuration,tmdb_genres"], env)
    run(materialize + ["--select", "raw_discover_pages", "--partition-range", years], env)
    run(materialize + ["--select", "movie_details*"], env)
    store = next((tmp_path / "data").glob("snapshot-catalog-*"))
    assert {p.stem for p in (store / "raw" / "discover").glob("*.jsonl")} == {str(y) for y in range(2015, 2025)}
    assert (store / "details" / "movie_details.jsonl").read_text().count("\n") == len(load_snapshot(demo_dir).movies)
    assert (store / "posters" / "poster_status.parquet").is_file()
    assert (store / "dataset" / "splits.parquet").is_file() and (
        store / "reports" / "eda" / "eda_report.html"
    ).is_file()
    assert any((home / "storage").iterdir())  # the runs are in the instance's sqlite storage


def test_tmdb_replay_command_serves_a_snapshot(demo_dir):
    process = subprocess.Popen(
        [BIN / "genre-pipeline", "tmdb-replay", "--snapshot", str(demo_dir), "--port", "0", "--token", "t0k"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stdout.readline()
        api_url = first_line.split(" at ")[-1].strip()
        deadline = time.monotonic() + 10
        while True:
            try:
                response = requests.get(
                    f"{api_url}/genre/movie/list", headers={"Authorization": "Bearer t0k"}, timeout=2
                )
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200 and len(response.json()["genres"]) == 19
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_tmdb_replay_refuses_a_folder_in_the_wrong_layout(tmp_path):
    result = subprocess.run(
        [BIN / "genre-pipeline", "tmdb-replay", "--snapshot", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "not laid out like a TMDb snapshot" in result.stderr
