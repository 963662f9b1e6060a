"""`genre-pipeline serve`: the real server on a free port, called over HTTP, with the session's champion."""

import base64
import io
import json
import re

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from .serving_support import (
    MOVIE,
    assert_consistent,
    champion,
    metric,
    percent,
    phone_browser,
    start_server,
    stop,
)


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


def test_every_reference_of_the_openapi_document_resolves(server):
    """/redoc refuses a document with one reference it cannot follow, so each must lead somewhere in it."""
    document = server.get("/openapi.json").json()

    def references(node):
        if isinstance(node, dict):
            yield from ([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                yield from references(value)
        elif isinstance(node, list):
            for value in node:
                yield from references(value)

    for reference in references(document):
        target = document
        for part in reference.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, reference
            target = target[part]
    batch = document["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["movies"]["items"]["properties"]["overview"]["type"] == "string"


def test_redoc_renders_every_route_offline_in_a_real_browser(server, chromium):
    """The browser has no internet here: ReDoc's script comes from this process or not at all."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = phone_browser(chromium)
    try:
        driver.get(server.url + "/redoc")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "h1"))
        page = driver.find_element(By.TAG_NAME, "body").text
        assert "Something went wrong" not in page
        assert driver.find_element(By.CSS_SELECTOR, "h1").text.startswith("genre_pipeline")
        menu = driver.execute_script("return [...document.querySelectorAll('[role=menuitem]')].map(e => e.textContent)")
        for summary in ("Genres for one movie", "Genres for up to", "Genres for N movies as tensors", "Model metadata"):
            assert any(summary in item for item in menu), (summary, menu)
    finally:
        driver.quit()


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


def v2_inputs(triton, movies: list[dict], *, binary: bool) -> list:
    """tritonclient tensors for ``movies``: the binary extension (raw poster bytes) or plain JSON (base64)."""
    tensors = []
    for name, datatype in (("overview", "BYTES"), ("tagline", "BYTES"), ("runtime", "FP64"), ("poster", "BYTES")):
        if name == "runtime":
            data = np.array([m.get(name, np.nan) for m in movies], dtype=np.float64)
        elif name == "poster" and not binary:
            data = np.array([base64.b64encode(m.get(name, b"")).decode() for m in movies], dtype=object)
        else:
            data = np.array([m.get(name, b"" if name == "poster" else "") for m in movies], dtype=object)
        tensor = triton.InferInput(name, [len(movies)], datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        tensors.append(tensor)
    return tensors


def test_tritonclient_gets_from_the_open_inference_protocol_what_predict_answers(server, trained, poster_bytes):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    predictor = champion(trained)
    version = str(predictor.info["version"])
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("genre-classifier") and client.is_model_ready("genre-classifier", version)
    assert not client.is_model_ready("genre-classifier", "999") and not client.is_model_ready("another-model")
    metadata = client.get_model_metadata("genre-classifier")
    assert metadata["versions"] == [version] and metadata["parameters"]["labels"] == predictor.classes
    assert {t["name"]: t["datatype"] for t in metadata["outputs"]} == {"probabilities": "FP32", "decisions": "BOOL"}
    assert {"overview", "tagline", "title", "poster", "runtime", "release_year"} <= {
        t["name"] for t in metadata["inputs"]
    }

    sent = {k: MOVIE[k] for k in ("overview", "tagline", "runtime")}
    movies = [sent | {"poster": poster_bytes}, {"overview": "Two rival chefs fall in love in Provence."}]
    expected = [
        server.post("/predict", data=sent, files={"poster": ("poster.jpg", poster_bytes, "image/jpeg")}).json(),
        server.post("/predict", json=movies[1]).json(),
    ]
    for binary in (True, False):
        outputs = (
            None
            if binary
            else [triton.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "decisions")]
        )
        result = client.infer("genre-classifier", v2_inputs(triton, movies, binary=binary), outputs=outputs)
        probabilities, decisions = result.as_numpy("probabilities"), result.as_numpy("decisions")
        assert probabilities.shape == decisions.shape == (2, len(predictor.classes))
        assert result.get_response()["model_version"] == version
        for row, row_decisions, answer in zip(probabilities, decisions, expected):
            served = {s["genre"]: s["probability"] for s in answer["scores"]}
            assert dict(zip(predictor.classes, row.tolist())) == pytest.approx(served, abs=1e-4)
            assert [g for g, d in zip(predictor.classes, row_decisions) if d] == sorted(
                answer["genres"], key=predictor.classes.index
            )

    no_overview = triton.InferInput("tagline", [1], "BYTES")
    no_overview.set_data_from_numpy(np.array(["Trust no one."], dtype=object))
    with pytest.raises(InferenceServerException, match="overview is required"):
        client.infer("genre-classifier", [no_overview])
    with pytest.raises(InferenceServerException, match="version 999 is not served"):
        client.infer("genre-classifier", v2_inputs(triton, movies, binary=True), model_version="999")
    assert client.is_server_ready()


def test_the_batch_route_names_its_own_shape_when_sent_another(server):
    for body in ([MOVIE], MOVIE):
        answer = server.post("/predict/batch", json=body)
        assert answer.status_code in (400, 422) and '{"movies": [' in answer.json()["error"], answer.text


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ([{"name": ["overview"], "shape": [1], "datatype": "BYTES", "data": ["x"]}], "not an input of this model"),
        (
            [
                {"name": "overview", "shape": [2], "datatype": "BYTES", "data": ["A heist.", "A duel."]},
                {"name": "runtime", "shape": [1], "datatype": "FP64", "data": [90]},
            ],
            "their sizes differ: [1, 2]",
        ),
        (
            [
                {"name": "overview", "shape": [1], "datatype": "BYTES", "data": ["A heist."]},
                {"name": "runtime", "shape": [1], "datatype": "FP64", "data": [-3]},
            ],
            "movie 0: runtime: Input should be greater than or equal to 0",
        ),
        ([{"name": "overview", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}], "more than one value"),
        ([{"name": "tagline", "shape": [1], "datatype": "BYTES", "data": ["Run."]}], "overview is required"),
    ],
)
def test_a_bad_infer_request_is_refused_naming_the_input(tensors, message):
    from genre_pipeline.serving import open_inference
    from genre_pipeline.serving.inputs import InputError

    with pytest.raises(InputError, match=re.escape(message)) as refused:
        open_inference.read_request(json.dumps({"inputs": tensors}).encode(), None)
    assert refused.value.status == 422
