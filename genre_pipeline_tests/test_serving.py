"""`genre-pipeline serve`: the real server on a free port, called over HTTP, with the session's champion."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient
from PIL import Image

from genre_pipeline import tracking
from genre_pipeline.champion import registry
from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.models.classifier import GenreClassifier
from genre_pipeline.models.encoders import runtime
from genre_pipeline.models.pyfunc import encode_inputs, load_encoders

from .conftest import BIN, free_port, make_champion, wait_for

MOVIE = {
    "overview": "A retired gunslinger rides into a frontier town ruled by a ruthless cattle baron.",
    "tagline": "Justice rides alone.",
    "title": "The Long Ride",
    "runtime": 104,
    "release_year": 1994,
}


class Server:
    def __init__(self, uri: str, process: subprocess.Popen, port: int):
        self.uri, self.process, self.url = uri, process, f"http://127.0.0.1:{port}"

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=120, **kwargs)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)


def start_server(trained, tmp_path, *options: str) -> Server:
    """The server on a copy of the session's stack-champion tracking store, so that moving its alias
    changes nothing for other tests (the copy's model versions point at the same artifacts)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(trained["stack_uri"].removeprefix("sqlite:///"), db)
    uri, port = tracking.sqlite_uri(db), free_port()
    process = subprocess.Popen(
        [
            BIN / "genre-pipeline",
            "serve",
            "--tracking-uri",
            uri,
            "--port",
            str(port),
            "--poll-interval",
            "0.5",
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "GENRE_PIPELINE_DATA": str(trained["data_dir"])},
    )
    server = Server(uri, process, port)
    try:
        wait_for(server.url + "/health", process)
    except AssertionError:
        process.kill()
        raise
    return server


def stop(server: Server) -> str:
    server.process.terminate()
    _, stderr = server.process.communicate(timeout=60)
    return stderr.decode()


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    running = start_server(trained, tmp_path_factory.mktemp("serve"))
    yield running
    log = stop(running)
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def poster_file(demo_dir):
    return sorted((demo_dir / "posters").iterdir())[0]


@pytest.fixture(scope="module")
def poster_bytes(poster_file) -> bytes:
    return poster_file.read_bytes()


def champion(trained) -> GenrePredictor:
    return GenrePredictor.from_registry(trained["stack_uri"])


def assert_consistent(result: dict, labels: list[str]) -> None:
    scores = result["scores"]
    assert sorted(s["genre"] for s in scores) == sorted(labels)
    assert [s["probability"] for s in scores] == sorted((s["probability"] for s in scores), reverse=True)
    for score in scores:
        assert 0 <= score["probability"] <= 1 and 0 < score["threshold"] < 1
        assert score["decided"] == (score["genre"] in result["genres"])
    assert set(result["genres"]) == {s["genre"] for s in scores if s["decided"]}


def test_predict_answers_every_genre_as_the_champion_does_in_process(server, trained, poster_bytes):
    predictor = champion(trained)
    text = server.post("/predict", json=MOVIE)
    assert text.status_code == 200, text.text
    answer = text.json()
    assert_consistent(answer, predictor.classes)
    assert answer["model"]["version"] == str(predictor.info["version"])
    assert answer["model"]["run_id"] == predictor.info["run_id"]
    assert answer["inputs"] == {
        "overview": True,
        "tagline": True,
        "title": predictor.reads_titles,
        "metadata": ["runtime", "release_year"] if predictor.reads_metadata else [],
        "poster": False,
    }
    (expected,) = predictor.predict_rows([MOVIE])
    served = {s["genre"]: s["probability"] for s in answer["scores"]}
    assert served == pytest.approx({g: p for g, p, _ in expected.scores}, abs=1e-4)
    assert answer["genres"] == expected.genres

    form = {k: str(v) for k, v in MOVIE.items()}
    upload = server.post("/predict", data=form, files={"poster": ("poster.jpg", poster_bytes, "image/jpeg")})
    assert upload.status_code == 200, upload.text
    with_poster = upload.json()
    assert_consistent(with_poster, predictor.classes)
    assert with_poster["inputs"]["poster"] is predictor.uses_posters
    (expected,) = predictor.predict_rows([MOVIE | {"poster": poster_bytes}])
    served = {s["genre"]: s["probability"] for s in with_poster["scores"]}
    assert served == pytest.approx({g: p for g, p, _ in expected.scores}, abs=1e-4)

    # A browser sends an empty file part when no poster is chosen, and empty strings for blank fields.
    blank = server.post(
        "/predict",
        data={"overview": MOVIE["overview"], "tagline": "", "runtime": ""},
        files={"poster": ("", b"", "application/octet-stream")},
    )
    assert blank.status_code == 200, blank.text
    assert blank.json()["inputs"] == {
        "overview": True,
        "tagline": False,
        "title": False,
        "metadata": [],
        "poster": False,
    }


def test_a_batch_answers_what_single_requests_answer(server, trained, poster_bytes):
    movies = [
        MOVIE,
        {"overview": "Two rival chefs fall in love during a summer in Provence.", "vote_average": 7.1},
        {"overview": "A space marine fights alien hordes on a mining colony.", "poster_base64": ""},
        {
            "overview": "A haunted farmhouse and whispers after midnight.",
            "poster_base64": base64.b64encode(poster_bytes).decode(),
        },
    ]
    batch = server.post("/predict/batch", json={"movies": movies})
    assert batch.status_code == 200, batch.text
    answers = batch.json()["predictions"]
    assert len(answers) == len(movies)
    for movie, answer in zip(movies, answers):
        single = server.post("/predict", json=movie).json()
        assert answer["genres"] == single["genres"]
        assert [s["probability"] for s in answer["scores"]] == pytest.approx(
            [s["probability"] for s in single["scores"]], abs=1e-4
        )
    assert answers[2]["inputs"]["poster"] is False  # an empty poster_base64 is no poster
    assert answers[3]["inputs"]["poster"] is champion(trained).uses_posters


def test_health_and_model_describe_the_registered_champion(server, trained):
    predictor = champion(trained)
    assert server.get("/health").json()["version"] == str(predictor.info["version"])
    model = server.get("/model").json()
    labels = json.loads(trained["store"].label_sets_file.read_text())[predictor.info["label_set"]]
    assert model["labels"] == labels and list(model["thresholds"]) == labels
    assert model["thresholds"] == pytest.approx(dict(zip(labels, predictor.thresholds)))
    run = MlflowClient(trained["uri"]).get_run(model["run_id"])
    assert model["metrics"]["test"]["macro_f1"] == pytest.approx(run.data.metrics["test_macro_f1"])
    assert model["metrics"]["validation"]["macro_f1"] == pytest.approx(run.data.metrics["validation_macro_f1"])
    assert model["model"] == run.data.params["model"] and model["alias"] == "champion"
    assert model["text_encoders"] == json.loads(run.data.params["text_encoders"])


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


AS_JSON = {"Content-Type": "application/json"}


def bad_requests(poster: bytes) -> dict:
    """name -> (request keyword arguments, path, expected status, phrase the error must contain)."""
    text = {k: str(v) for k, v in MOVIE.items()}
    bomb = png(12_000, 12_000, "L")  # ~140 KB that decode to 144 megapixels
    return {
        "empty overview": (dict(json={"overview": "   "}), "/predict", 422, "overview: empty"),
        "missing overview": (dict(json={"tagline": "x"}), "/predict", 422, "overview: required"),
        "overview too long": (dict(json={"overview": "word " * 10_000}), "/predict", 422, "overview:"),
        "unknown field": (dict(json=MOVIE | {"genre": "Drama"}), "/predict", 422, "genre: not a field"),
        "negative runtime": (dict(json=MOVIE | {"runtime": -5}), "/predict", 422, "runtime:"),
        "malformed JSON": (
            dict(data='{"overview": ', headers=AS_JSON),
            "/predict",
            400,
            "not valid JSON",
        ),
        "JSON list": (dict(json=[MOVIE]), "/predict", 400, "must be a JSON object"),
        "wrong content type": (
            dict(data="overview", headers={"Content-Type": "text/plain"}),
            "/predict",
            415,
            "text/plain",
        ),
        "no content type": (dict(data=b"overview"), "/predict", 415, "(none)"),
        "poster not an image": (
            dict(data=text, files={"poster": ("p.jpg", b"%PDF-1.4 not an image", "image/jpeg")}),
            "/predict",
            422,
            "not a usable image",
        ),
        "truncated poster": (
            dict(data=text, files={"poster": ("p.jpg", poster[: len(poster) // 2], "image/jpeg")}),
            "/predict",
            422,
            "not a usable image",
        ),
        "decompression bomb": (
            dict(data=text, files={"poster": ("p.png", bomb, "image/png")}),
            "/predict",
            413,
            "megapixels",
        ),
        "poster over 8 MiB": (
            dict(data=text, files={"poster": ("p.jpg", b"\xff" * 9_200_000, "image/jpeg")}),
            "/predict",
            413,
            "the file is 8.77 MiB, over the 8 MiB limit",
        ),
        "poster a byte over 8 MiB": (
            dict(data=text, files={"poster": ("p.jpg", b"\xff" * (8 * 2**20 + 1), "image/jpeg")}),
            "/predict",
            413,
            "8,388,609 bytes, over the 8,388,608-byte (8 MiB) limit",
        ),
        "20 MB upload": (
            dict(data=text, files={"poster": ("p.jpg", b"\0" * 20_000_000, "image/jpeg")}),
            "/predict",
            413,
            "over the 16 MiB limit",
        ),
        "a thousand nested arrays": (
            dict(data=b'{"overview": ' + b"[" * 1000 + b"]" * 1000 + b"}", headers=AS_JSON),
            "/predict",
            400,
            "nested deeper",
        ),
        "NaN runtime": (
            dict(data=b'{"overview": "A heist.", "runtime": NaN}', headers=AS_JSON),
            "/predict",
            422,
            "runtime: Input should be a finite number",
        ),
        "a billion votes": (dict(json=MOVIE | {"vote_count": 10**30}), "/predict", 422, "vote_count"),
        "poster as text": (dict(data=text | {"poster": "abc"}), "/predict", 422, "poster: must be an image file"),
        "bad base64": (dict(json=MOVIE | {"poster_base64": "***"}), "/predict", 422, "not base64"),
        "empty batch": (dict(json={"movies": []}), "/predict/batch", 422, "movies:"),
        "batch too large": (dict(json={"movies": [MOVIE] * 300}), "/predict/batch", 422, "movies:"),
        "batch with a bad movie": (
            dict(json={"movies": [MOVIE, {"overview": ""}]}),
            "/predict/batch",
            422,
            "movies[1].overview",
        ),
        "batch as a form": (dict(data=text), "/predict/batch", 415, "application/json"),
    }


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, poster_bytes):
    for name, (kwargs, path, status, phrase) in bad_requests(poster_bytes).items():
        answer = server.post(path, **kwargs)
        assert answer.status_code == status, (name, answer.status_code, answer.text[:300])
        error = answer.json()["error"]
        assert phrase in error and "Traceback" not in error, (name, error)
    assert server.post("/predict", json=MOVIE).status_code == 200
    assert server.get("/health").json()["status"] == "ok"


def test_every_answer_has_a_request_id_and_one_access_line_without_the_movie(trained, tmp_path):
    private = start_server(trained, tmp_path)
    try:
        given = private.post("/predict", json=MOVIE, headers={"X-Request-ID": "caller-id.42"})
        made = private.post("/predict", json={"overview": ""}, headers={"X-Request-ID": "not a token!"})
        too_large = private.post("/predict", data=b"x" * (17 * 2**20), headers=AS_JSON)
    finally:
        log = stop(private)
    assert given.status_code == 200 and given.headers["x-request-id"] == "caller-id.42"
    assert made.status_code == 422 and len(made.headers["x-request-id"]) == 32  # a new id, not the caller's
    assert too_large.status_code == 413 and too_large.headers["x-request-id"]
    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"request_id"')]
    by_id = {line["request_id"]: line for line in lines}
    assert by_id["caller-id.42"]["status"] == 200 and by_id["caller-id.42"]["path"] == "/predict"
    assert by_id[made.headers["x-request-id"]]["status"] == 422
    assert by_id[too_large.headers["x-request-id"]]["status"] == 413
    assert MOVIE["overview"] not in log and "not a token!" not in log


def test_the_page_loads_only_what_the_server_serves(server):
    page = server.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "//" not in "".join(part.split('"')[0] for part in page.text.split('src="')[1:])
    for asset in ("/static/page.js", "/static/page.css"):
        served = server.get(asset)
        assert served.status_code == 200, asset
        assert "http://" not in served.text and "https://" not in served.text, asset
    docs = server.get("/docs")
    assert docs.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', docs.text)
    assert len(assets) == 2 and all(asset.startswith("/") and not asset.startswith("//") for asset in assets)
    for asset in assets:  # Swagger UI from this process, so /docs works offline
        assert server.get(asset).status_code == 200, asset


def test_the_server_reloads_a_moved_champion_without_dropping_requests(trained, tmp_path):
    running = start_server(trained, tmp_path)
    statuses, versions, stop_requests = [], set(), threading.Event()

    def keep_asking():
        while not stop_requests.is_set():
            answer = running.post("/predict", json=MOVIE)
            statuses.append(answer.status_code)
            if answer.ok:
                versions.add(answer.json()["model"]["version"])

    client = MlflowClient(running.uri, running.uri)
    before = client.get_model_version_by_alias(registry.REGISTERED_MODEL, registry.CHAMPION_ALIAS)
    report = json.loads(trained["store"].model_report_file("baseline_model").read_text())
    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        loaded_at = running.get("/model").json()["loaded_at"]
        time.sleep(2)  # four polls: an alias that did not move reloads nothing
        assert running.get("/model").json()["loaded_at"] == loaded_at
        moved = make_champion(running.uri, report)
        deadline = time.monotonic() + 180
        while running.get("/model").json()["version"] != moved:
            assert time.monotonic() < deadline, "the server did not load the moved champion"
            time.sleep(0.5)
        time.sleep(1)
    finally:
        stop_requests.set()
        asker.join(timeout=180)
        log = stop(running)
    assert statuses and set(statuses) == {200}, log[-3000:]
    assert versions == {str(before.version), moved}


def percent(name: str, style: str) -> float:
    """The percentage a CSS property is set to in an inline style."""
    return float(re.search(rf"(?:^|;\s*){name}: ([\d.]+)%", style).group(1))


def phone_browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=390,844"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_page_predicts_in_a_real_browser_at_phone_width(server, trained, chromium, poster_file, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = phone_browser(chromium)
    predictor = champion(trained)
    wait = WebDriverWait(driver, 120)
    try:
        driver.get(server.url)
        model_line = driver.find_element(By.ID, "model-line")
        wait.until(lambda _: model_line.text.startswith("Answered by"))
        assert f"v{predictor.info['version']}" in model_line.text

        driver.find_element(By.ID, "overview").send_keys(MOVIE["overview"])
        driver.find_element(By.ID, "tagline").send_keys(MOVIE["tagline"])
        driver.find_element(By.ID, "poster").send_keys(str(poster_file))
        preview = driver.find_element(By.ID, "poster-preview")
        wait.until(
            lambda _: preview.is_displayed() and driver.execute_script("return arguments[0].naturalWidth", preview)
        )
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda _: len(driver.find_elements(By.CSS_SELECTOR, "#bars li")) == len(predictor.classes))

        expected = server.post(
            "/predict",
            data={"overview": MOVIE["overview"], "tagline": MOVIE["tagline"]},
            files={"poster": (poster_file.name, poster_file.read_bytes(), "image/jpeg")},
        ).json()
        rows = driver.find_elements(By.CSS_SELECTOR, "#bars li")
        assert [row.get_attribute("data-genre") for row in rows] == [s["genre"] for s in expected["scores"]]
        for row, score in zip(rows, expected["scores"]):
            assert ("decided" in row.get_attribute("class").split()) is score["decided"]
            fill = row.find_element(By.CLASS_NAME, "fill").get_attribute("style")
            line = row.find_element(By.CLASS_NAME, "threshold").get_attribute("style")
            assert percent("width", fill) == pytest.approx(score["probability"] * 100, abs=0.06)
            assert percent("left", line) == pytest.approx(score["threshold"] * 100, abs=0.06)
            assert row.find_element(By.CLASS_NAME, "track").size["width"] > 100  # bars are drawn, not collapsed
        decided_text = driver.find_element(By.ID, "decided").text
        assert decided_text == (", ".join(expected["genres"]) or "none reaches its threshold")
        assert ("poster" in driver.find_element(By.ID, "inputs-line").text) is predictor.uses_posters
        assert f"v{predictor.info['version']}" in driver.find_element(By.ID, "answered-by").text
        # Phone width: nothing wider than the screen, and the answer scrolled into view.
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        in_view = "const r = arguments[0].getBoundingClientRect(); return r.top >= 0 && r.top < window.innerHeight"
        wait.until(lambda _: driver.execute_script(in_view, driver.find_element(By.ID, "answer")))
        assert driver.execute_script("return window.scrollY") > 0
        driver.save_screenshot(str(tmp_path / "page.png"))

        # An error from the server is shown, not swallowed: a file that is not an image.
        not_image = tmp_path / "notes.jpg"
        not_image.write_bytes(b"not an image at all")
        driver.find_element(By.ID, "poster").send_keys(str(not_image))
        driver.find_element(By.ID, "submit").click()
        error = driver.find_element(By.ID, "error")
        wait.until(lambda _: error.is_displayed())
        assert "not a usable image" in error.text
        wait.until(lambda _: driver.execute_script(in_view, error))
    finally:
        driver.quit()


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of the server's Prometheus /metrics (0 when absent)."""
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{selector}}}" if selector else "")) + r" ([0-9.e+-]+)"
    found = re.search(r"^" + pattern + "$", server.get("/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_count_requests_genres_and_the_served_version(server, trained):
    before_ok = metric(server, "genre_http_requests_total", method="POST", route="/predict", status="200")
    before_bad = metric(server, "genre_http_requests_total", method="POST", route="/predict", status="422")
    answer = server.post("/predict", json=MOVIE)
    server.post("/predict", json={"overview": ""})
    assert metric(server, "genre_http_requests_total", method="POST", route="/predict", status="200") == before_ok + 1
    assert metric(server, "genre_http_requests_total", method="POST", route="/predict", status="422") == before_bad + 1
    for genre in answer.json()["genres"]:
        assert metric(server, "genre_predicted_genres_total", genre=genre) >= 1
    version = champion(trained).info["version"]
    assert metric(server, "genre_model_info", model="stacked_model", version=version) == 1
    assert metric(server, "genre_model_ready") == 1
    assert metric(server, "genre_http_request_duration_seconds_count", route="/predict") >= 2
    assert "genre_queue_depth" in server.get("/metrics").text
    server.get("/no/such/path/123")
    assert "/no/such/path" not in server.get("/metrics").text  # unmatched paths are one label, not many
    assert server.get("/health/live").json() == {"status": "alive"}
    assert server.get("/health/ready").json()["ready"] is True


KEYS = ("first-key-" + "a" * 16, "second-key-" + "b" * 16)


@pytest.fixture(scope="module")
def guarded(trained, tmp_path_factory):
    """A server with two API keys, a rate limit of one request per 5 s with a burst of 10 per key, and 300 ms of
    gathering, so that concurrent requests certainly share a model call."""
    folder = tmp_path_factory.mktemp("guarded")
    (folder / "keys").write_text("# test keys\n" + "\n".join(KEYS) + "\n")
    options = ["--api-keys-file", str(folder / "keys"), "--rate-limit", "0.2", "--rate-burst", "10"]
    running = start_server(trained, folder, *options, "--batch-wait-ms", "300")
    yield running
    log = stop(running)
    assert "Traceback" not in log and not any(key in log for key in KEYS), log[-3000:]


def test_batched_requests_get_their_own_movies_answer_identical_to_one_at_a_time(guarded, trained, poster_bytes):
    movies = [
        MOVIE | {"overview": f"{MOVIE['overview']} Chapter {i}: a {word}."}
        for i, word in enumerate(
            [
                "ghost haunts the saloon",
                "love story blooms",
                "bank robbery goes wrong",
                "war breaks out",
                "space ship lands",
                "family comedy of errors",
            ]
        )
    ]
    rows = [movie | ({"poster": poster_bytes} if i % 2 else {}) for i, movie in enumerate(movies)]
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    calls_before = metric(guarded, "genre_model_batch_rows_count")
    rows_before = metric(guarded, "genre_model_batch_rows_sum")

    def ask(i: int) -> requests.Response:
        if i % 2:
            form = {k: str(v) for k, v in movies[i].items()}
            return guarded.post("/predict", data=form, files={"poster": ("p.png", poster_bytes)}, headers=headers)
        return guarded.post("/predict", json=movies[i], headers=headers)

    with ThreadPoolExecutor(len(movies)) as pool:
        answers = list(pool.map(ask, range(len(movies))))
    assert [a.status_code for a in answers] == [200] * len(movies)
    calls = metric(guarded, "genre_model_batch_rows_count") - calls_before
    assert metric(guarded, "genre_model_batch_rows_sum") - rows_before == len(movies)
    assert calls < len(movies)  # some requests shared a model call

    predictor = champion(trained)
    together = predictor.predict_rows(rows)
    for i, row in enumerate(rows):
        (alone,) = predictor.predict_rows([row])
        assert together[i].scores == alone.scores  # exactly: a batch does not change a movie's answer
        served = {s["genre"]: s["probability"] for s in answers[i].json()["scores"]}
        assert served == {g: round(p, 4) for g, p, _ in alone.scores}, i


def test_keys_are_required_and_limited_per_key(guarded):
    missing = guarded.post("/predict", json=MOVIE)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = guarded.post("/predict", json=MOVIE, headers={"X-API-Key": "x" * 30})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
    assert guarded.get("/model").json()["api_key_required"] is True  # the page asks for a key
    statuses = [guarded.post("/predict", json=MOVIE, headers={"X-API-Key": KEYS[1]}) for _ in range(12)]
    limited = [answer for answer in statuses if answer.status_code == 429]
    assert [a.status_code for a in statuses[:10]] == [200] * 10 and limited
    assert all(int(answer.headers["Retry-After"]) >= 1 for answer in limited)
    assert metric(guarded, "genre_rate_limited_requests_total") >= len(limited)


def test_a_full_queue_answers_503_with_retry_after_and_nothing_else_fails(trained, tmp_path, poster_bytes):
    tiny = start_server(trained, tmp_path, "--max-batch", "1", "--max-queue", "1")
    form = {k: str(v) for k, v in MOVIE.items()}

    def ask(_) -> requests.Response:
        return tiny.post("/predict", data=form, files={"poster": ("p.png", poster_bytes)})

    try:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(ask, range(24)))
        shed = metric(tiny, "genre_shed_requests_total", reason="queue_full")
        after = tiny.post("/predict", json=MOVIE)
    finally:
        log = stop(tiny)
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 503)
    assert shed == statuses.count(503)
    assert after.status_code == 200  # and it serves again as soon as the burst is over
    assert "Traceback" not in log


def test_a_serving_process_loads_no_torch_and_predicts_as_pytorch_does(server, trained, poster_bytes, tmp_path):
    mapped = (Path("/proc") / str(server.process.pid) / "maps").read_text()
    assert "libtorch" not in mapped  # the running server never loaded PyTorch

    rows = [MOVIE, MOVIE | {"poster": base64.b64encode(poster_bytes).decode()}]
    script = textwrap.dedent(f"""
        import base64, json, sys
        import pandas as pd
        from genre_pipeline.champion.predictor import GenrePredictor
        predictor = GenrePredictor.from_registry({trained["stack_uri"]!r})
        rows = json.load(sys.stdin)
        rows = [r | ({{"poster": base64.b64decode(r["poster"])}} if "poster" in r else {{}}) for r in rows]
        out = predictor.predict_frame(pd.DataFrame(rows)).probabilities
        print(json.dumps({{"torch": "torch" in sys.modules, "probabilities": out.tolist()}}))
    """)
    lean = subprocess.run([sys.executable, "-c", script], input=json.dumps(rows), capture_output=True, text=True)
    assert lean.returncode == 0, lean.stderr[-2000:]
    lean = json.loads(lean.stdout.strip().splitlines()[-1])
    assert lean["torch"] is False

    # The same classifier folder without its runtime records loads its encoders through PyTorch.
    predictor = champion(trained)
    folder = tmp_path / "classifier"
    shutil.copytree(Path(predictor.model.unwrap_python_model().classifier_dir), folder)
    shutil.rmtree(folder / "runtime")
    classifier = GenreClassifier.load(folder)
    encoders = load_encoders(classifier.encoders, folder)
    assert not any(isinstance(e, (runtime.TextGraph, runtime.ImageGraph)) for e in encoders.values())
    frame = pd.DataFrame([MOVIE, MOVIE | {"poster": poster_bytes}])
    inputs, _, _ = encode_inputs(frame, classifier, encoders)
    np.testing.assert_allclose(lean["probabilities"], classifier.probabilities(inputs), atol=1e-6)


def test_the_page_asks_for_the_key_of_a_server_with_keys(guarded, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = phone_browser(chromium)
    wait = WebDriverWait(driver, 120)
    try:
        driver.get(guarded.url)
        key_field = driver.find_element(By.ID, "api-key")
        wait.until(lambda _: key_field.is_displayed())  # /model says this server requires a key
        driver.find_element(By.ID, "overview").send_keys(MOVIE["overview"])
        driver.find_element(By.ID, "submit").click()
        error = driver.find_element(By.ID, "error")
        wait.until(lambda _: error.is_displayed())
        assert "API key is required" in error.text
        key_field.send_keys(KEYS[0])
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda _: driver.find_element(By.ID, "answer").is_displayed())
        assert driver.find_elements(By.CSS_SELECTOR, "#bars li")
        assert driver.execute_script("return sessionStorage.getItem('genre-pipeline-api-key')") == KEYS[0]
    finally:
        driver.quit()


def test_ready_only_once_the_champion_has_loaded(trained):
    """The app in this process on a real uvicorn server, with a champion load that waits for the test."""
    import uvicorn

    from genre_pipeline.serving.app import create_app
    from genre_pipeline.serving.reloader import ChampionReloader

    released = threading.Event()

    def slow_load(uri: str, version: str | None) -> GenrePredictor:
        released.wait(120)
        return GenrePredictor.from_registry(uri, version)

    reloader = ChampionReloader(trained["stack_uri"], poll_interval_s=0.2, load=slow_load)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(reloader), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    running = Server(trained["stack_uri"], None, port)
    try:
        wait_for(running.url + "/health/live", None)
        ready = running.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "loading" in ready.json()["reason"]
        refused = running.post("/predict", json=MOVIE)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert metric(running, "genre_model_ready") == 0
        released.set()
        wait_for(running.url + "/health/ready", None)
        assert running.get("/health/ready").json()["version"] == champion(trained).info["version"]
        assert running.post("/predict", json=MOVIE).status_code == 200
        assert metric(running, "genre_model_ready") == 1
    finally:
        released.set()
        server.should_exit = True
        thread.join(30)
