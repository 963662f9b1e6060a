"""A TMDb API v3 replay server over a snapshot folder, with fault injection for tests.

It serves TMDb's own routes and response shapes (``/3/configuration``,
``/3/genre/movie/list``, ``/3/discover/movie``, ``/3/movie/{id}``, ``/3/movie/changes``)
and images at ``/t/p/{size}/{file}``, and checks credentials as TMDb does.

With ``as_of`` set it serves the catalog as it stood on that date: discover and details know only the
movies released by then, ``/movie/changes`` only the changes until then. ``ReplayServer.advance_to``
moves it forward, as time moves the real catalog.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from genre_pipeline.tmdb.faults import INTERNAL_ERROR, INVALID_KEY, INVALID_PAGE, NOT_FOUND, RATE_LIMITED, Faults
from genre_pipeline.tmdb.snapshot import Snapshot, load_snapshot

PAGE_SIZE = 20
MAX_PAGE = 500
DEFAULT_REPLAY_TOKEN = "replay-token"  # not a secret: the local replay server's default credential

SORT_KEYS = {
    "popularity": lambda m: m.get("popularity") or 0.0,
    "vote_average": lambda m: m.get("vote_average") or 0.0,
    "vote_count": lambda m: m.get("vote_count") or 0,
    "primary_release_date": lambda m: m.get("release_date") or "",
    "title": lambda m: m.get("title") or "",
    "original_title": lambda m: m.get("original_title") or "",
    "revenue": lambda m: m.get("revenue") or 0,
}


class ReplayState:
    def __init__(
        self, snapshot: Snapshot, *, token: str, api_key: str | None, faults: Faults, as_of: dt.date | None = None
    ):
        self.snapshot = snapshot
        self.token = token
        self.api_key = api_key
        self.faults = faults
        self.by_year = snapshot.by_year()
        self.dated = [m for m in snapshot.movies.values() if m.get("release_date")]
        self.as_of = as_of
        self.random = random.Random(faults.seed)
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # by route
        self.paths: Counter[str] = Counter()  # by path, to tell whether anything was fetched twice
        self.faults_injected: Counter[str] = Counter()
        self._faults_per_path: Counter[str] = Counter()
        self.base_url = ""

    def released(self, movie: dict) -> bool:
        """Whether the catalog knows ``movie`` on its date: an undated movie only when no date is set."""
        if self.as_of is None:
            return True
        return bool(movie.get("release_date")) and movie["release_date"] <= self.as_of.isoformat()

    def today(self) -> dt.date:
        return self.as_of or dt.date.today()

    def count(self, route: str, path: str) -> None:
        with self.lock:
            self.requests[route] += 1
            self.paths[path] += 1

    def draw_fault(self, path: str, kind: str, fraction: float) -> bool:
        if fraction <= 0:
            return False
        with self.lock:
            cap = self.faults.max_per_path
            if cap is not None and self._faults_per_path[path] >= cap:
                return False
            if self.random.random() >= fraction:
                return False
            self._faults_per_path[path] += 1
            self.faults_injected[kind] += 1
            return True


class _Handler(BaseHTTPRequestHandler):
    server_version = "TMDbReplay/1.0"
    protocol_version = "HTTP/1.1"
    state: ReplayState
    dripping = False

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        # Request lines can carry ?api_key=...: never print them.
        pass

    # --- responses ---------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.dripping:
            self._drip(body)
        else:
            self.wfile.write(body)

    def _drip(self, body: bytes) -> None:
        """A server that keeps a connection alive without ever finishing: one byte at a time."""
        try:
            for offset in range(len(body)):
                self.wfile.write(body[offset : offset + 1])
                self.wfile.flush()
                time.sleep(self.state.faults.drip_interval_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json;charset=utf-8", headers)

    # --- dispatch ------------------------------------------------------------------
    def do_GET(self):  # noqa: N802 - stdlib name
        state = self.state
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        route = self._route_name(path)
        state.count(route, path)
        faults = state.faults
        if state.draw_fault(path, "slow", faults.slow_fraction):
            time.sleep(faults.slow_s)
        self.dripping = state.draw_fault(path, "drip", faults.drip_fraction)
        if state.draw_fault(path, "rate_limit", faults.rate_limit_fraction):
            return self._json(429, RATE_LIMITED, {"Retry-After": f"{faults.retry_after_s:g}"})
        if state.draw_fault(path, "server_error", faults.server_error_fraction):
            return self._json(503 if state.random.random() < 0.5 else 500, INTERNAL_ERROR)
        if path.startswith("/t/p/"):
            return self._image(path)
        if not path.startswith("/3/"):
            return self._json(404, NOT_FOUND)
        if not self._authorized(query):
            return self._json(401, INVALID_KEY)
        if route == "configuration":
            return self._json(200, self._configuration())
        if route == "genres":
            return self._json(200, state.snapshot.genres)
        if route == "discover":
            return self._discover(query)
        if route == "changes":
            return self._changes(query)
        if route == "movie":
            return self._movie(path.rsplit("/", 1)[-1])
        return self._json(404, NOT_FOUND)

    @staticmethod
    def _route_name(path: str) -> str:
        if path.startswith("/t/p/"):
            return "image"
        routes = {
            "/3/configuration": "configuration",
            "/3/genre/movie/list": "genres",
            "/3/discover/movie": "discover",
            "/3/movie/changes": "changes",
        }
        if path in routes:
            return routes[path]
        if path.startswith("/3/movie/"):
            return "movie"
        return "other"

    def _authorized(self, query: dict) -> bool:
        state = self.state
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer ") and header[len("Bearer ") :] == state.token:
            return True
        return state.api_key is not None and query.get("api_key") == state.api_key

    # --- routes --------------------------------------------------------------------
    def _configuration(self) -> dict:
        configuration = json.loads(json.dumps(self.state.snapshot.configuration))
        images = configuration.setdefault("images", {})
        images["base_url"] = images["secure_base_url"] = f"{self.state.base_url}/t/p/"
        return configuration

    def _discover(self, query: dict) -> None:
        state = self.state
        try:
            page = int(query.get("page", "1"))
        except ValueError:
            page = 0
        if not 1 <= page <= MAX_PAGE:
            return self._json(400, INVALID_PAGE)
        if "primary_release_year" in query:
            try:
                movies = state.by_year.get(int(query["primary_release_year"]), [])
            except ValueError:
                movies = []
        else:
            movies = state.dated
        movies = [m for m in movies if state.released(m)]
        gte = query.get("primary_release_date.gte")
        lte = query.get("primary_release_date.lte")
        if gte:
            movies = [m for m in movies if m["release_date"] >= gte]
        if lte:
            movies = [m for m in movies if m["release_date"] <= lte]
        if query.get("with_genres"):
            # TMDb: comma means AND, pipe means OR.
            if "|" in query["with_genres"]:
                wanted_any = {int(g) for g in query["with_genres"].split("|") if g.strip()}
                movies = [m for m in movies if wanted_any & {g["id"] for g in m.get("genres") or []}]
            else:
                wanted_all = {int(g) for g in query["with_genres"].split(",") if g.strip()}
                movies = [m for m in movies if wanted_all <= {g["id"] for g in m.get("genres") or []}]
        field, _, direction = query.get("sort_by", "popularity.desc").partition(".")
        key = SORT_KEYS.get(field, SORT_KEYS["popularity"])
        descending = direction != "asc"
        # Ties broken by id so that paging is stable.
        movies = sorted(movies, key=lambda m: (key(m), -m["id"] if descending else m["id"]), reverse=descending)
        start = (page - 1) * PAGE_SIZE
        results = [state.snapshot.discover_record(m) for m in movies[start : start + PAGE_SIZE]]
        self._json(
            200,
            {
                "page": page,
                "results": results,
                "total_pages": math.ceil(len(movies) / PAGE_SIZE),
                "total_results": len(movies),
            },
        )

    def _changes(self, query: dict) -> None:
        today = self.state.today().isoformat()
        end = min(query.get("end_date") or today, today)
        start = query.get("start_date") or (dt.date.fromisoformat(end) - dt.timedelta(days=1)).isoformat()
        try:
            page = max(1, int(query.get("page", "1")))
        except ValueError:
            page = 1
        changed = sorted({c["id"] for c in self.state.snapshot.changes if start <= c["changed_at"][:10] <= end})
        chunk = 100
        results = [{"id": movie_id, "adult": False} for movie_id in changed[(page - 1) * chunk : page * chunk]]
        self._json(
            200,
            {
                "results": results,
                "page": page,
                "total_pages": max(1, math.ceil(len(changed) / chunk)),
                "total_results": len(changed),
            },
        )

    def _movie(self, movie_id: str) -> None:
        try:
            movie = self.state.snapshot.movies.get(int(movie_id))
        except ValueError:
            movie = None
        if movie is None or not self.state.released(movie):
            return self._json(404, NOT_FOUND)
        self._json(200, movie)

    def _image(self, path: str) -> None:
        state = self.state
        parts = path.split("/")  # ['', 't', 'p', size, file]
        if len(parts) != 5 or "/" in parts[4] or parts[4].startswith("."):
            return self._send(404, b"Not Found", "text/plain")
        size, name = parts[3], parts[4]
        file = state.snapshot.posters_dir / name
        if not file.is_file():
            return self._send(404, b"Not Found", "text/plain")
        data = file.read_bytes()
        if size.startswith("w") and size[1:].isdigit():
            data = _downscale(data, int(size[1:]))
        faults = state.faults
        broken = faults.broken_image(name)
        if broken == "corrupt":
            state.faults_injected["corrupt_image"] += 1
            data = data[:64] + random.Random(name).randbytes(len(data) - 64)
        elif broken == "truncated":
            state.faults_injected["truncated_image"] += 1
            data = data[: len(data) // 2]
        self._send(200, data, "image/jpeg")


def _downscale(data: bytes, width: int) -> bytes:
    """Serve a smaller TMDb size by resizing; larger sizes get the stored file."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width <= width:
                return data
            height = round(image.height * width / image.width)
            buffer = io.BytesIO()
            image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=90)
            return buffer.getvalue()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        # A broken stored file is served as it is (the client must judge it), not a dropped connection.
        return data


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that hangs up mid-answer (killed, or past its deadline) is not the server's error.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class ReplayServer:
    """A running replay server; use ``serve_snapshot`` for a managed one."""

    def __init__(
        self,
        snapshot: Snapshot | Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = DEFAULT_REPLAY_TOKEN,
        api_key: str | None = None,
        faults: Faults | None = None,
        as_of: dt.date | None = None,
    ):
        if not isinstance(snapshot, Snapshot):
            snapshot = load_snapshot(snapshot)
        self.state = ReplayState(snapshot, token=token, api_key=api_key, faults=faults or Faults(), as_of=as_of)
        handler = type("ReplayHandler", (_Handler,), {"state": self.state})
        self.httpd = _QuietServer((host, port), handler)
        self.httpd.daemon_threads = True
        bound_host, bound_port = self.httpd.server_address[:2]
        self.state.base_url = f"http://{bound_host}:{bound_port}"
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """Root of the server; the API lives under ``/3``."""
        return self.state.base_url

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/3"

    @property
    def requests(self) -> Counter[str]:
        return self.state.requests

    def advance_to(self, as_of: dt.date) -> None:
        """Serve the catalog as it stands on ``as_of`` from the next request on; time only moves forward."""
        if self.state.as_of is not None and as_of < self.state.as_of:
            raise ValueError(f"the catalog stands at {self.state.as_of}; it cannot go back to {as_of}")
        self.state.as_of = as_of

    def start(self) -> "ReplayServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="tmdb-replay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()


@contextlib.contextmanager
def serve_snapshot(snapshot: Snapshot | Path | str, **options):
    server = ReplayServer(snapshot, **options).start()
    try:
        yield server
    finally:
        server.stop()
