"""`genre-pipeline serve` in operation: API keys, micro-batching, the bounded queue, reloading a moved
champion, readiness, and a serving process without PyTorch; the real server over HTTP."""

import base64
import json
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

from genre_pipeline import images
from genre_pipeline.champion import registry
from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.images import verify_poster
from genre_pipeline.models.classifier import GenreClassifier
from genre_pipeline.models.encoders import runtime
from genre_pipeline.models.pyfunc import encode_inputs, load_encoders
from genre_pipeline.serving import inputs as request_checks

from .conftest import free_port, make_champion, wait_for
from .serving_support import (
    MOVIE,
    Server,
    champion,
    metric,
    phone_browser,
    start_server,
    stop,
)

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


def test_a_poster_the_request_check_decoded_is_not_decoded_again(trained, poster_bytes, monkeypatch):
    """The server verifies (so decodes) a poster once; the model reads that image, and answers as it does
    for the raw file, which it decodes itself."""
    predictor = champion(trained)
    decoded = []

    def counted(data, **options):
        decoded.append(len(data))
        return verify_poster(data, **options)

    checked = request_checks.checked_poster(poster_bytes)
    monkeypatch.setattr(images, "verify_poster", counted)  # what the model would decode a poster with
    (from_check,) = predictor.predict_rows([MOVIE | {"poster": checked}], inputs_checked=True)
    assert decoded == [] and from_check.used_poster
    (from_file,) = predictor.predict_rows([MOVIE | {"poster": poster_bytes}])
    assert decoded == [len(poster_bytes)]
    assert from_check.scores == from_file.scores


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
