"""What the serving tests share: the real server on a free port over a copy of the session's
stack-champion store, its fixtures, and the checks every answer passes."""

import os
import re
import shutil
import subprocess

import requests

from genre_pipeline import tracking
from genre_pipeline.champion.predictor import GenrePredictor

from .conftest import BIN, free_port, wait_for

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


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of the server's Prometheus /metrics (0 when absent)."""
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{selector}}}" if selector else "")) + r" ([0-9.e+-]+)"
    found = re.search(r"^" + pattern + "$", server.get("/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


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
