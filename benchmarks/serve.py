"""`genre-pipeline serve` over real HTTP on 127.0.0.1: latency, batch throughput, and bad input under load.

    python benchmarks/serve.py --snapshot ../shared/data/tmdb-snapshot

Serves the champion registered in the snapshot source's data folder (run benchmarks/models.py or
`GENRE_PIPELINE_SNAPSHOT=... make run` first). Measures, one client at a time: p50/p95 of /predict
text-only (overview, tagline, title, metadata as JSON) and with a poster (multipart upload);
/predict/batch throughput against GenrePredictor.predict_rows in this process on the same movies;
then 2,000 good requests with 200 bad ones mixed in, from four client threads: 5xx answers, good
requests not answered 200, bad requests not answered 4xx, and the server's resident memory before
and after. The last line is one JSON object.
"""

import argparse
import base64
import io
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from common import select_snapshot
from PIL import Image

BIN = Path(sys.executable).parent
TARGETS = {"text_p50_ms": 100, "poster_p50_ms": 200, "batch_vs_in_process": 0.8, "memory_growth": 0.10}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def movie_json(movie: dict) -> dict:
    from genre_pipeline.dataset.cleaning import metadata_fields

    fields = {"overview": movie["overview"], "tagline": movie.get("tagline") or None, "title": movie.get("title")}
    return {k: v for k, v in (fields | metadata_fields(movie)).items() if v is not None}


def percentiles(timings: list[float]) -> dict:
    return {
        "p50_ms": round(statistics.median(timings), 1),
        "p95_ms": round(statistics.quantiles(timings, n=20)[18], 1),
        "n": len(timings),
    }


def timed(call, n: int, warm: int = 5) -> dict:
    timings = []
    for i in range(n + warm):
        started = time.perf_counter()
        answer = call(i)
        if answer.status_code != 200:
            raise RuntimeError(f"answer {answer.status_code}: {answer.text[:300]}")
        if i >= warm:
            timings.append((time.perf_counter() - started) * 1000)
    return percentiles(timings)


def bad_request(kind: int, poster: bytes) -> dict:
    """Keyword arguments of requests.post for one of ten kinds of bad request."""
    text = {"overview": "A heist in Rome goes wrong.", "tagline": "One last job."}
    bomb = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(bomb, "PNG")
    return [
        dict(json={"overview": ""}),
        dict(json={"tagline": "no overview"}),
        dict(json={"overview": "x " * 15_000}),
        dict(data=b'{"overview": "unterminated', headers={"Content-Type": "application/json"}),
        dict(data=b"overview=plain", headers={"Content-Type": "text/plain"}),
        dict(data=text, files={"poster": ("p.jpg", b"GIF89a but not really", "image/jpeg")}),
        dict(data=text, files={"poster": ("p.jpg", poster[: len(poster) // 3], "image/jpeg")}),
        dict(data=text, files={"poster": ("p.png", bomb.getvalue(), "image/png")}),
        dict(data=text, files={"poster": ("p.jpg", os.urandom(20_000_000), "image/jpeg")}),
        dict(json={"overview": "A heist.", "runtime": "long"}),
    ][kind % 10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, type=Path)
    parser.add_argument("--tracking-uri", default=None, help="default: the snapshot source's data folder")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--batch-movies", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--good", type=int, default=2000)
    parser.add_argument("--bad", type=int, default=200)
    parser.add_argument("--port", type=int, default=8811)
    args = parser.parse_args()
    select_snapshot(args.snapshot)

    from genre_pipeline import cli
    from genre_pipeline.models.predictor import GenrePredictor
    from genre_pipeline.tmdb.snapshot import load_snapshot

    uri = args.tracking_uri or cli._default_tracking_uri()
    snapshot = load_snapshot(args.snapshot)
    rng = random.Random(0)
    movies = [
        m
        for m in snapshot.movies.values()
        if (m.get("overview") or "").strip()
        and m.get("poster_path")
        and (snapshot.posters_dir / m["poster_path"].lstrip("/")).is_file()
    ]
    rng.shuffle(movies)
    posters = {m["id"]: (snapshot.posters_dir / m["poster_path"].lstrip("/")).read_bytes() for m in movies[:3000]}
    movies = movies[:3000]

    url = f"http://127.0.0.1:{args.port}"
    started = time.monotonic()
    server = subprocess.Popen(
        [BIN / "genre-pipeline", "serve", "--tracking-uri", uri, "--port", str(args.port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(server.stderr.read().decode()[-3000:])
            try:
                if requests.get(url + "/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        startup_s = time.monotonic() - started
        model = requests.get(url + "/model", timeout=10).json()
        print(f"serving {model['model']} v{model['version']} (started in {startup_s:.1f} s)", flush=True)
        session = requests.Session()

        def text_only(i: int) -> dict:
            return dict(json=movie_json(movies[i]))

        def with_poster(i: int) -> dict:
            form = {k: str(v) for k, v in movie_json(movies[i]).items()}
            return dict(data=form, files={"poster": ("p.jpg", posters[movies[i]["id"]])})

        def post(client, kwargs: dict):
            return client.post(url + "/predict", timeout=120, **kwargs)

        latency = {
            "text_only": timed(lambda i: post(session, text_only(i)), args.latency_requests),
            "poster": timed(lambda i: post(session, with_poster(i)), args.latency_requests),
        }
        print(f"latency: {latency}", flush=True)

        batch_movies = movies[: args.batch_movies]
        batch_json = [
            movie_json(m) | {"poster_base64": base64.b64encode(posters[m["id"]]).decode()} for m in batch_movies
        ]
        chunks = [batch_json[i : i + args.batch_size] for i in range(0, len(batch_json), args.batch_size)]
        session.post(url + "/predict/batch", json={"movies": chunks[0][:4]}, timeout=600)
        t = time.perf_counter()
        for chunk in chunks:
            answer = session.post(url + "/predict/batch", json={"movies": chunk}, timeout=600)
            assert answer.status_code == 200, answer.text[:300]
        http_rate = len(batch_json) / (time.perf_counter() - t)

        predictor = GenrePredictor.from_registry(uri)
        rows = [movie_json(m) | {"poster": posters[m["id"]]} for m in batch_movies]
        predictor.predict_rows(rows[:4])
        t = time.perf_counter()
        for i in range(0, len(rows), args.batch_size):
            predictor.predict_rows(rows[i : i + args.batch_size])
        in_process_rate = len(rows) / (time.perf_counter() - t)
        del predictor
        batch = {
            "http_movies_per_s": round(http_rate, 1),
            "in_process_movies_per_s": round(in_process_rate, 1),
            "ratio": round(http_rate / in_process_rate, 3),
            "movies": len(rows),
            "batch_size": args.batch_size,
        }
        print(f"batch (posters included): {batch}", flush=True)

        memory_start = rss_mb(server.pid)
        sample = next(iter(posters.values()))
        plan = [("good", i % len(movies)) for i in range(args.good)] + [("bad", i) for i in range(args.bad)]
        rng.shuffle(plan)

        def send(item):
            kind, i = item
            with requests.Session() as client:
                if kind == "bad":
                    return kind, post(client, bad_request(i, sample)).status_code
                return kind, post(client, with_poster(i) if i % 2 else text_only(i)).status_code

        t = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(send, plan))
        chaos_s = time.perf_counter() - t
        time.sleep(5)
        memory_end = rss_mb(server.pid)
        chaos = {
            "good": args.good,
            "bad": args.bad,
            "answers_5xx": sum(status >= 500 for _, status in results),
            "good_not_200": sum(kind == "good" and status != 200 for kind, status in results),
            "bad_not_4xx": sum(kind == "bad" and not 400 <= status < 500 for kind, status in results),
            "wall_s": round(chaos_s, 1),
            "memory_start_mb": round(memory_start, 1),
            "memory_end_mb": round(memory_end, 1),
            "memory_growth": round(memory_end / memory_start - 1, 4),
            "health_after": requests.get(url + "/health", timeout=10).json()["status"],
        }
        print(f"bad input under load: {chaos}", flush=True)
    finally:
        server.terminate()
        stderr = server.communicate(timeout=60)[1].decode()
    met = {
        "text_p50": latency["text_only"]["p50_ms"] < TARGETS["text_p50_ms"],
        "poster_p50": latency["poster"]["p50_ms"] < TARGETS["poster_p50_ms"],
        "batch_ratio": batch["ratio"] >= TARGETS["batch_vs_in_process"],
        "no_5xx": chaos["answers_5xx"] == 0,
        "no_dropped": chaos["good_not_200"] == 0,
        "memory": chaos["memory_growth"] <= TARGETS["memory_growth"],
        "no_traceback_in_server_log": "Traceback" not in stderr,
    }
    print(f"targets met: {met}")
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "champion": f"{model['model']} v{model['version']}",
                "startup_s": round(startup_s, 1),
                "latency": latency,
                "batch": batch,
                "bad_input_under_load": chaos,
                "targets": TARGETS,
                "met": met,
            }
        )
    )


if __name__ == "__main__":
    main()
