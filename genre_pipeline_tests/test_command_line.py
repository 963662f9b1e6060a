"""The command line: `dagster asset materialize` against the demo catalog, and each `genre-pipeline` command."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from genre_pipeline import tracking
from genre_pipeline.tmdb.snapshot import load_snapshot

from .conftest import best_constant_macro_f1

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_one_dagster_cli_command_materializes_the_whole_graph_like_make_run(trained, demo_dir):
    """The session's models come from one `dagster asset materialize --select '*'` run (conftest's
    trained fixture, make run's command): every asset of the graph is there."""
    store, home = trained["store"].root, trained["home"]
    assert trained["years"] == "2015...2024"
    assert {p.stem for p in (store / "raw" / "discover").glob("*.jsonl")} == {str(y) for y in range(2015, 2025)}
    assert (store / "details" / "movie_details.jsonl").read_text().count("\n") == len(load_snapshot(demo_dir).movies)
    assert (store / "posters" / "poster_status.parquet").is_file()
    assert (store / "dataset" / "splits.parquet").is_file() and (
        store / "reports" / "eda" / "eda_report.html"
    ).is_file()
    assert any((home / "storage").iterdir())  # the runs are in the instance's sqlite storage
    first = trained["instance"].get_runs()[-1]  # later tests add runs of their own
    assert first.status == dg.DagsterRunStatus.SUCCESS  # one command, one run, every asset
    assert (first.tags[ASSET_PARTITION_RANGE_START_TAG], first.tags[ASSET_PARTITION_RANGE_END_TAG]) == ("2015", "2024")
    assert (store / "predictions" / "genre_predictions.parquet").is_file()  # the last asset of the graph


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


# --- predict and evaluate with the champion: each command's contract (exit code, message, output) ----


def cli(args, trained, check=True):
    env = {**os.environ, "GENRE_PIPELINE_DATA": str(trained["data_dir"])}
    result = subprocess.run(
        [BIN / "genre-pipeline", *args, "--tracking-uri", trained["stack_uri"]],  # the product's model
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


GUNSLINGER = ["--overview", "A gunslinger rides into a dusty frontier town.", "--tagline", "Justice rides alone."]
ROW = re.compile(r"^  (?P<genre>\S.*?)\s+(?P<p>\d\.\d{3}) (?P<rel>>=|< ) +(?P<t>\d\.\d{3})  (?P<decided>yes|no)$")


def test_predict_lists_every_decided_genre_against_its_threshold_and_prints_nothing_else(trained):
    result = cli(["predict", *GUNSLINGER, "--top-k", "2"], trained)
    lines = result.stdout.splitlines()
    rows = [ROW.match(line) for line in lines if ROW.match(line)]
    decided = [r["genre"] for r in rows if r["decided"] == "yes"]
    assert lines[0] == "decided genres: " + (", ".join(decided) or "none (no genre reaches its threshold)")
    assert len(rows) >= 2 and [float(r["p"]) for r in rows] == sorted((float(r["p"]) for r in rows), reverse=True)
    for row in rows:
        assert (row["rel"] == ">=") == (row["decided"] == "yes") == (float(row["p"]) >= float(row["t"]) - 5e-4)
    assert len([r for r in rows if r["decided"] == "no"]) <= 2  # beyond the top 2, only decided genres are listed
    assert "genre-classifier v" in lines[-1]
    # No progress bars, warnings or log lines: stderr is empty when nothing needs saying.
    assert result.stderr == ""


FOOTER = re.compile(
    r"predicted (with|without) a poster; model: \w+ \(\w+\), genre-classifier v\d+, label set (full|merged)"
)


def test_readmes_predict_example_is_what_the_command_prints(trained):
    """README's first-hour example, run as printed. The session trains a smaller demo than `make run`
    (120 movies, MiniLM), so its champion's figures differ from the printed ones: the lines that do not
    depend on them must be the command's own, and the others must have the command's form."""
    readme = (REPO / "README.md").read_text()
    example = re.search(r"( *)```text\n *\$ \.venv/bin/genre-pipeline (predict [^\n]*)\n(.*?) *```", readme, re.S)
    printed = [line.removeprefix(example[1]) for line in example[3].rstrip("\n").splitlines()]
    lines = cli(shlex.split(example[2]), trained).stdout.splitlines()
    assert printed[1:3] == lines[1:3]  # what a threshold means, and the table's header
    rows = [ROW.match(line) for line in printed[3:-1]]
    assert rows and all(rows)
    assert printed[0] == "decided genres: " + ", ".join(r["genre"] for r in rows if r["decided"] == "yes")
    for row in rows:
        assert (row["rel"] == ">=") == (row["decided"] == "yes") == (float(row["p"]) >= float(row["t"]))
    assert FOOTER.fullmatch(printed[-1]) and FOOTER.fullmatch(lines[-1])
    assert FOOTER.fullmatch(printed[-1])[1] == FOOTER.fullmatch(lines[-1])[1]  # with or without a poster


def test_predict_json_carries_every_note_and_the_decided_genres(trained, tmp_path):
    long_overview = "A gunslinger rides into a dusty frontier town where nobody is what they seem. " * 40
    result = cli(["predict", "--overview", long_overview, "--poster", str(tmp_path), "--top-k", "1", "--json"], trained)
    answer = json.loads(result.stdout)
    assert set(answer) == {"genres", "scores", "used_poster", "notes", "model"}
    assert answer["used_poster"] is False and answer["model"]["version"]
    assert {s["genre"] for s in answer["scores"] if s["decided"]} == set(answer["genres"])
    assert all(s["decided"] == (s["probability"] >= s["threshold"]) for s in answer["scores"])
    folder_note, long_note = (
        f"the poster {tmp_path} is a folder, not an image file: predicted without it",
        "tokens long: the text encoders read only its first 256",
    )
    assert answer["notes"][0] == folder_note and long_note in answer["notes"][1] and len(answer["notes"]) == 2
    assert result.stderr.splitlines() == [f"genre-pipeline predict: {note}" for note in answer["notes"]]


def test_predict_names_a_poster_that_is_missing_or_not_an_image(trained, demo_dir, tmp_path):
    missing = cli(["predict", "--overview", "A love story in Paris.", "--poster", str(tmp_path / "nope.jpg")], trained)
    assert "nope.jpg does not exist: predicted without it" in missing.stderr
    assert "predicted without a poster" in missing.stdout

    not_an_image = tmp_path / "poster.jpg"
    not_an_image.write_text("this is not a picture")
    text_only = cli(["predict", "--overview", "A love story in Paris.", "--poster", str(not_an_image)], trained)
    assert "predicted without a poster" in text_only.stdout
    assert "not usable" in text_only.stderr or "reads text only" in text_only.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "--overview", "A love story.", "--top-k", "0"], "--top-k: must be at least 1, got 0"),
        (["predict", "--overview", "A love story.", "--top-k", "-1"], "--top-k: must be at least 1, got -1"),
        (["predict", "--overview", "A love story.", "--top-k", "three"], "--top-k: not a whole number: 'three'"),
        (["predict", "--overview", "  "], "--overview is empty"),
        (["predict", "--overview", "x" * 100_000], "--overview has 100,000 characters, over the 20,000"),
        (["evaluate", "--snapshot", ".", "--limit", "0"], "--limit: must be at least 1, got 0"),
        (["evaluate", "--snapshot", ".", "--limit", "-5"], "--limit: must be at least 1, got -5"),
        (["serve", "--port", "70000"], "--port: must be between 0 and 65535, got 70000"),
    ],
)
def test_bad_arguments_are_refused_with_a_message_before_any_work(args, message, tmp_path):
    result = subprocess.run(
        [BIN / "genre-pipeline", *args, "--tracking-uri", f"sqlite:///{tmp_path}/none.db"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""
    assert not (tmp_path / "none.db").exists()  # refused before the model store was even opened


def test_evaluate_command(trained, demo_dir, tmp_path):
    result = json.loads(cli(["evaluate", "--snapshot", str(demo_dir), "--json"], trained).stdout)
    assert {"macro_f1", "micro_f1", "samples_f1", "n_movies", "labels", "skipped", "per_genre"} <= result.keys()
    assert result["n_movies"] > 100 and 0 < result["macro_f1"] <= 1 and result["seen_in_training"] > 0
    assert result["macro_f1"] > best_constant_macro_f1(trained["store"])

    text = cli(["evaluate", "--snapshot", str(demo_dir), "--limit", "40"], trained)
    movies_line = next(line for line in text.stdout.splitlines() if line.startswith("movies scored: "))
    assert re.search(r"skipped: \d+ without an overview, \d+ with no genre of the label set$", movies_line)
    scored = int(re.match(r"movies scored: (\d+)", movies_line)[1])
    skipped = [int(n) for n in re.findall(r"(\d+) with", movies_line.split("skipped: ")[1])]
    assert scored + sum(skipped) == 40
    assert text.stderr.splitlines()[-1] == f"scored {scored}/{scored}"  # progress only, no library noise

    wrong = cli(["evaluate", "--snapshot", str(tmp_path)], trained, check=False)
    assert wrong.returncode == 2 and "not laid out like a TMDb snapshot" in wrong.stderr


def test_no_champion_is_a_clear_error(tmp_path):
    uri = tracking.sqlite_uri(tmp_path / "empty.db")
    result = subprocess.run(
        [BIN / "genre-pipeline", "predict", "--overview", "A story.", "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "no genre-classifier@champion" in result.stderr


def test_a_refresh_without_dagster_home_says_what_to_set():
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    result = subprocess.run(
        [sys.executable, "-m", "genre_pipeline.refresh"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "DAGSTER_HOME is not set: set it to the folder" in result.stderr
    assert "Traceback" not in result.stderr
