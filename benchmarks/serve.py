"""`genre-pipeline serve` under load, over real HTTP on 127.0.0.1, with an asyncio load generator.

    python benchmarks/serve.py --snapshot ../shared/data/tmdb-snapshot [--tracking-uri URI]

Serves the champion registered in the snapshot source's data folder (run benchmarks/models.py or
`GENRE_PIPELINE_SNAPSHOT=... make run` first; a model logged before runtime records loads PyTorch).
Measures:
- start-up: from launching the process to /health/ready answering 200;
- /predict/batch throughput (64 movies a call), text-only and with posters;
- 1, 4, 16 and 64 closed-loop clients sending single movies, text-only and with posters: throughput,
  p50/p99, 5xx, and how many movies each model call held;
- overload: an open loop at 4x the sustainable rate (the 16-client text-only throughput): 503s shed,
  any other 5xx, the accepted requests' p99, memory before and after, and the latency right after;
- bad input mixed into good requests from four clients: every bad one a 4xx, no 5xx;
- the server's peak RSS and whether it loaded PyTorch; in-process predict p50 (one movie with a
  poster) with the server's thread settings, after the server has stopped;
- the same 1, 4 and 16 clients on the Open Inference Protocol route (/v2/models/.../infer, one movie
  a request, JSON), and on `mlflow models serve` with the same champion (/invocations, one movie a
  request), started after ours has stopped: the ratio of ours to MLflow's throughput at each level.
The last line is one JSON object.
"""

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from common import select_snapshot

BIN = Path(sys.executable).parent
TARGETS = {
    "clients16_vs_batch": 0.8,
    "rss_mb": 1200,
    "startup_s": 5.0,
    "predict_p50_ms": 50.0,
    "clients16_vs_mlflow_serve": 1.2,
}
CLIENTS = (1, 4, 16, 64)
COMPARED_CLIENTS = (1, 4, 16)


def proc_status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def movie_json(movie: dict) -> dict:
    from genre_pipeline.dataset.cleaning import metadata_fields

    fields = {"overview": movie["overview"], "tagline": movie.get("tagline") or None, "title": movie.get("title")}
    return {k: v for k, v in (fields | metadata_fields(movie)).items() if v is not None}


def with_base64_poster(movie: dict, poster: bytes | None) -> dict:
    """The movie's JSON fields and, if given, its poster as base64 (how JSON carries a binary column)."""
    return movie_json(movie) | ({"poster": base64.b64encode(poster).decode()} if poster else {})


def v2_request(movie: dict, poster: bytes | None) -> dict:
    """One movie as an Open Inference Protocol infer request (JSON: a poster as base64)."""
    fields = with_base64_poster(movie, poster)
    tensors = [
        {"name": k, "datatype": "BYTES" if isinstance(v, str) else "FP64", "shape": [1], "data": [v]}
        for k, v in fields.items()
    ]
    return {"json": {"inputs": tensors}}


def mlflow_request(movie: dict, poster: bytes | None) -> dict:
    """One movie as MLflow's scoring server takes it (a binary column as base64)."""
    row = with_base64_poster(movie, poster)
    return {"json": {"dataframe_split": {"columns": list(row), "data": [list(row.values())]}}}


def p99_ms(ordered: list[float]) -> float | None:
    """The 99th percentile (nearest rank) of sorted latencies in seconds, in milliseconds."""
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1) if ordered else None


def summary(latencies: list[float], statuses: list[int], seconds: float) -> dict:
    ok = sorted(t for t, s in zip(latencies, statuses) if s == 200)
    return {
        "throughput_per_s": round(len(ok) / seconds, 1),
        "p50_ms": round(statistics.median(ok) * 1000, 1) if ok else None,
        "p99_ms": p99_ms(ok),
        "errors_5xx": sum(s >= 500 for s in statuses),
        "requests": len(statuses),
    }


async def post(session: aiohttp.ClientSession, url: str, request: dict) -> tuple[float, int]:
    started = time.perf_counter()
    if "files" in request:
        form = aiohttp.FormData()
        for key, value in request["form"].items():
            form.add_field(key, value)
        form.add_field("poster", request["files"], filename="poster.jpg", content_type="image/jpeg")
        call = session.post(url, data=form)
    else:
        call = session.post(url, json=request["json"])
    try:
        async with call as answer:
            await answer.read()
            return time.perf_counter() - started, answer.status
    except (aiohttp.ClientError, TimeoutError):
        return time.perf_counter() - started, 599  # no answer at all counts as a server error


async def closed_loop(url: str, requests: list[dict], clients: int, seconds: float) -> dict:
    """``clients`` clients, each sending its next request as soon as the previous one is answered."""
    latencies, statuses = [], []
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client(n: int) -> None:
            i = n
            while time.monotonic() < deadline:
                latency, status = await post(session, url, requests[i % len(requests)])
                latencies.append(latency)
                statuses.append(status)
                i += clients

        started = time.monotonic()
        await asyncio.gather(*(client(n) for n in range(clients)))
        wall = time.monotonic() - started
    return {"clients": clients} | summary(latencies, statuses, wall)


async def open_loop(url: str, requests: list[dict], rate_per_s: float, seconds: float) -> dict:
    """Requests started at ``rate_per_s`` whatever the answers, for ``seconds``."""
    latencies, statuses = [], []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one(i: int) -> None:
            latency, status = await post(session, url, requests[i % len(requests)])
            latencies.append(latency)
            statuses.append(status)

        started, tasks, i = time.monotonic(), [], 0
        while (now := time.monotonic()) < started + seconds:
            due = int((now - started) * rate_per_s)
            while i < due:
                tasks.append(asyncio.create_task(one(i)))
                i += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
    accepted = sorted(t for t, s in zip(latencies, statuses) if s == 200)
    return {
        "offered_per_s": round(rate_per_s, 1),
        "requests": len(statuses),
        "accepted": len(accepted),
        "shed_503": statuses.count(503),
        "other_5xx": sum(s >= 500 and s != 503 for s in statuses),
        "accepted_p99_ms": p99_ms(accepted),
        "accepted_per_s": round(len(accepted) / seconds, 1),
    }


def bad_request(kind: int, poster: bytes) -> dict:
    """A request the API must refuse with a 4xx: a different kind of mistake for each ``kind``."""
    text = {"overview": "A heist in Lisbon goes wrong."}
    bad = [
        {"json": {"overview": ""}},
        {"json": {"overview": "x" * 50_000}},
        {"json": {"overview": "ok", "runtime": -5}},
        {"json": {"tagline": "no overview"}},
        {"form": text, "files": b"definitely not an image"},
        {"form": text, "files": poster[: len(poster) // 3]},
        {"json": {"overview": "ok", "poster_base64": "%%% not base64 %%%"}},
        {"json": {"overview": "ok", "vote_count": 1e30}},
    ]
    return bad[kind % len(bad)]


async def mixed(url: str, good: list[dict], bad: list[dict], clients: int) -> dict:
    plan = [("good", r) for r in good] + [("bad", r) for r in bad]
    random.Random(0).shuffle(plan)
    results = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client(n: int) -> None:
            for kind, request in plan[n::clients]:
                results.append((kind, (await post(session, url, request))[1]))

        await asyncio.gather(*(client(n) for n in range(clients)))
    return {
        "good": len(good),
        "bad": len(bad),
        "answers_5xx": sum(status >= 500 for _, status in results),
        "good_not_200": sum(kind == "good" and status != 200 for kind, status in results),
        "bad_not_4xx": sum(kind == "bad" and not 400 <= status < 500 for kind, status in results),
    }


async def batch_throughput(url: str, movies: list[dict], batch_size: int) -> float:
    chunks = [movies[i : i + batch_size] for i in range(0, len(movies), batch_size)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        async with session.post(url, json={"movies": chunks[0][:4]}) as answer:  # warm
            assert answer.status == 200, await answer.text()
        started = time.perf_counter()
        for chunk in chunks:
            async with session.post(url, json={"movies": chunk}) as answer:
                assert answer.status == 200, (await answer.text())[:300]
                await answer.read()
    return len(movies) / (time.perf_counter() - started)


def in_process_p50(uri: str, rows: list[dict]) -> float:
    """Single-movie predict latency in this process, with the server's process settings."""
    from genre_pipeline.champion.predictor import GenrePredictor
    from genre_pipeline.serving.process import configure_serving_process

    configure_serving_process(os.cpu_count() or 1)
    predictor = GenrePredictor.from_registry(uri)
    for row in rows[:10]:
        predictor.predict_rows([row])
    timings = []
    for row in rows[10:]:
        started = time.perf_counter()
        predictor.predict_rows([row])
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, type=Path)
    parser.add_argument("--tracking-uri", default=None, help="default: the snapshot source's data folder")
    parser.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--batch-movies", type=int, default=512)
    parser.add_argument("--good", type=int, default=1000)
    parser.add_argument("--bad", type=int, default=100)
    parser.add_argument("--port", type=int, default=8811)
    parser.add_argument("--serve-option", action="append", default=[], help="passed to genre-pipeline serve")
    args = parser.parse_args()
    select_snapshot(args.snapshot)

    from genre_pipeline import cli
    from genre_pipeline.tmdb.snapshot import load_snapshot

    uri = args.tracking_uri or cli._default_tracking_uri()
    snapshot = load_snapshot(args.snapshot)
    movies = [
        m
        for m in snapshot.movies.values()
        if (m.get("overview") or "").strip()
        and m.get("poster_path")
        and (snapshot.posters_dir / m["poster_path"].lstrip("/")).is_file()
    ]
    random.Random(0).shuffle(movies)
    movies = movies[:3000]
    posters = {m["id"]: (snapshot.posters_dir / m["poster_path"].lstrip("/")).read_bytes() for m in movies}
    text_only = [{"json": movie_json(m)} for m in movies]
    with_poster = [{"form": {k: str(v) for k, v in movie_json(m).items()}, "files": posters[m["id"]]} for m in movies]

    url = f"http://127.0.0.1:{args.port}"
    command = [BIN / "genre-pipeline", "serve", "--tracking-uri", uri, "--port", str(args.port)]
    server_log = tempfile.TemporaryFile()  # a file, not a pipe: one access line per request would fill a pipe
    started = time.monotonic()
    server = subprocess.Popen(
        [*command, "--log-level", "warning", *args.serve_option], stdout=subprocess.DEVNULL, stderr=server_log
    )
    try:
        startup_s = wait_ready(url, server, started)
        import requests

        model = requests.get(url + "/model", timeout=10).json()
        print(f"serving {model['model']} v{model['version']}; ready in {startup_s:.1f} s", flush=True)
        imports_torch = "libtorch" in Path(f"/proc/{server.pid}/maps").read_text()

        batch_rows = [movie_json(m) for m in movies[: args.batch_movies]]
        batch = {
            "text_only": round(asyncio.run(batch_throughput(url + "/predict/batch", batch_rows, 64)), 1),
            "poster": round(
                asyncio.run(
                    batch_throughput(
                        url + "/predict/batch",
                        [
                            r | {"poster_base64": base64.b64encode(posters[m["id"]]).decode()}
                            for r, m in zip(batch_rows, movies)
                        ],
                        64,
                    )
                ),
                1,
            ),
        }
        print(f"/predict/batch movies/s: {batch}", flush=True)

        concurrency, v2 = [], []
        v2_infer = f"/v2/models/{model['name']}/infer"
        for name, requests_ in (("text_only", text_only), ("poster", with_poster)):
            for clients in CLIENTS:
                calls_before = model_calls(url)
                level = asyncio.run(closed_loop(url + "/predict", requests_, clients, args.seconds))
                calls, rows = (after - before for after, before in zip(model_calls(url), calls_before))
                level = {"inputs": name, **level, "movies_per_model_call": round(rows / max(calls, 1), 2)}
                concurrency.append(level)
                print(json.dumps(level), flush=True)

        sustainable = next(c for c in concurrency if c["inputs"] == "text_only" and c["clients"] == 16)
        memory_before = proc_status(server.pid, "VmRSS")
        overload = asyncio.run(
            open_loop(url + "/predict", text_only, 4 * sustainable["throughput_per_s"], args.overload_seconds)
        )
        time.sleep(2)
        recovered = asyncio.run(closed_loop(url + "/predict", text_only, 1, 5))
        overload |= {
            "memory_before_mb": round(memory_before, 1),
            "memory_after_mb": round(proc_status(server.pid, "VmRSS"), 1),
            "p50_ms_right_after": recovered["p50_ms"],
            "errors_5xx_right_after": recovered["errors_5xx"],
        }
        print(f"overload: {overload}", flush=True)

        for name, requests_ in (
            ("text_only", [v2_request(m, None) for m in movies]),
            ("poster", [v2_request(m, posters[m["id"]]) for m in movies]),
        ):
            for clients in COMPARED_CLIENTS:
                level = asyncio.run(closed_loop(url + v2_infer, requests_, clients, args.seconds))
                v2.append({"inputs": name, **level})
                print("v2 " + json.dumps(v2[-1]), flush=True)

        sample = next(iter(posters.values()))
        good = [text_only[i] if i % 2 else with_poster[i] for i in range(args.good)]
        bad_input = asyncio.run(mixed(url + "/predict", good, [bad_request(i, sample) for i in range(args.bad)], 4))
        print(f"bad input under load: {bad_input}", flush=True)
        rss_mb = proc_status(server.pid, "VmHWM")  # the process's peak resident memory
    finally:
        server.terminate()
        server.wait(timeout=60)
        server_log.seek(0)
        stderr = server_log.read().decode()

    rows = [movie_json(m) | {"poster": posters[m["id"]]} for m in movies[:210]]
    predict_p50_ms = in_process_p50(uri, rows)
    clients16 = sustainable["throughput_per_s"]
    versus_mlflow = against_mlflow_serve(uri, args.port, movies, posters, concurrency, v2, args.seconds)
    mlflow16 = next(c for c in versus_mlflow if c["inputs"] == "text_only" and c["clients"] == 16)
    met = {
        "clients16_vs_batch": clients16 >= TARGETS["clients16_vs_batch"] * batch["text_only"],
        "no_other_5xx": overload["other_5xx"] == 0 and all(c["errors_5xx"] == 0 for c in concurrency),
        "imports_torch": not imports_torch,
        "rss_mb": rss_mb <= TARGETS["rss_mb"],
        "startup_s": startup_s <= TARGETS["startup_s"],
        "predict_p50_ms": predict_p50_ms <= TARGETS["predict_p50_ms"],
        "bad_input_4xx": bad_input["bad_not_4xx"] == 0 and bad_input["answers_5xx"] == 0,
        "no_traceback_in_server_log": "Traceback" not in stderr,
        "clients16_vs_mlflow_serve": mlflow16["ratio"] is not None
        and mlflow16["ratio"] >= TARGETS["clients16_vs_mlflow_serve"],
    }
    print(f"targets met: {met}")
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "champion": f"{model['model']} v{model['version']}",
                "concurrency": concurrency,
                "open_inference_protocol": v2,
                "versus_mlflow_serve": versus_mlflow,
                "mlflow_serve_ratio_16_clients_text_only": mlflow16["ratio"],
                "batch_throughput_per_s": batch["text_only"],
                "batch_throughput_with_posters_per_s": batch["poster"],
                "overload": overload,
                "bad_input_under_load": bad_input,
                "rss_mb": round(rss_mb, 1),
                "startup_s": round(startup_s, 2),
                "predict_p50_ms": round(predict_p50_ms, 1),
                "imports_torch": imports_torch,
                "targets": TARGETS,
                "met": met,
            }
        )
    )


def against_mlflow_serve(
    uri: str, port: int, movies: list[dict], posters: dict, ours: list[dict], v2: list[dict], seconds: float
) -> list[dict]:
    """`mlflow models serve` on the same champion and port (ours has stopped), driven by the same clients:
    its throughput beside ours (/predict and V2) at each level, and the ratio of /predict's to it."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the scoring server runs uvicorn from here
    }
    command = [BIN / "mlflow", "models", "serve", "-m", "models:/genre-classifier@champion", "--env-manager", "local"]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    compared = []
    try:
        wait_ready(url, server, time.monotonic(), path="/ping")
        for name in ("text_only", "poster"):
            requests_ = [mlflow_request(m, posters[m["id"]] if name == "poster" else None) for m in movies]
            for clients in COMPARED_CLIENTS:
                level = asyncio.run(closed_loop(url + "/invocations", requests_, clients, seconds))
                mine = next(c for c in ours if c["inputs"] == name and c["clients"] == clients)
                v2_level = next(c for c in v2 if c["inputs"] == name and c["clients"] == clients)
                theirs = level["throughput_per_s"]
                compared.append(
                    {
                        "inputs": name,
                        "clients": clients,
                        "genre_pipeline_per_s": mine["throughput_per_s"],
                        "v2_per_s": v2_level["throughput_per_s"],
                        "mlflow_serve_per_s": theirs,
                        "mlflow_serve_p50_ms": level["p50_ms"],
                        "mlflow_serve_5xx": level["errors_5xx"],
                        "ratio": round(mine["throughput_per_s"] / theirs, 2) if theirs else None,
                    }
                )
                print("versus mlflow models serve " + json.dumps(compared[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return compared


def wait_ready(url: str, server: subprocess.Popen, started: float, path: str = "/health/ready") -> float:
    import requests

    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode} before it was ready")
        try:
            if requests.get(url + path, timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.ConnectionError:
            pass
        time.sleep(0.05)


def model_calls(url: str) -> tuple[float, float]:
    """(model calls, movies in them) so far, from the server's /metrics."""
    import requests

    values = {}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("genre_model_batch_rows_count", "genre_model_batch_rows_sum"):
            values[name] = float(value)
    return values.get("genre_model_batch_rows_count", 0.0), values.get("genre_model_batch_rows_sum", 0.0)


if __name__ == "__main__":
    main()
