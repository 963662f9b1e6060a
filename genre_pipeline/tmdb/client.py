"""The TMDb API v3 client: pooled session, client-side rate limit, retries, on-disk cache.

The credential never appears in a message this module writes: every error is built
from redacted text and raised without its cause (whose text could hold the URL).
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import socket
import ssl
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar
from urllib.parse import urlsplit

import pydantic
import requests
import urllib3
from pydantic import Field
from requests.adapters import HTTPAdapter

from genre_pipeline.tmdb.transport import ClientStats, RateLimiter, ResponseCache

TMDB_API_URL = "https://api.themoviedb.org/3"
TOKEN_ENV = "TMDB_API_READ_ACCESS_TOKEN"
API_KEY_ENV = "TMDB_API_KEY"

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class TMDbError(RuntimeError):
    """A TMDb request failed; the message never contains the credential."""


class TMDbAuthError(TMDbError):
    pass


class TMDbNotFound(TMDbError):
    pass


class TMDbUnavailable(TMDbError):
    """Retries exhausted on 429, 5xx, timeouts or broken connections."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class TMDbUnreachable(TMDbError):
    """A connection to TMDb could not even start (the name did not resolve, the port refused, the TLS
    handshake failed): no retry schedule of minutes fixes that, so it is raised after a few seconds."""


# Attempts, a second apart, before a connection that cannot start is given up: rides out a blip, and
# fails the step within seconds instead of the minutes of the full retry schedule.
UNREACHABLE_ATTEMPTS = 3


def _cannot_connect(error: BaseException) -> str:
    """Why a connection could not start, in words ("" when it did start and broke later)."""
    seen = error
    while seen is not None:
        if isinstance(seen, requests.exceptions.SSLError | ssl.SSLError):
            return "the TLS handshake failed (a proxy or a clock that intercepts or breaks HTTPS?)"
        if isinstance(seen, urllib3.exceptions.NameResolutionError | socket.gaierror):
            return "its name does not resolve (DNS)"
        if isinstance(seen, ConnectionRefusedError):
            return "the connection was refused"
        if isinstance(seen, urllib3.exceptions.NewConnectionError) and "refused" in str(seen).lower():
            return "the connection was refused"
        if isinstance(seen, urllib3.exceptions.MaxRetryError):
            seen = seen.reason
            continue
        seen = (
            seen.__cause__
            or seen.__context__
            or (seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None)
        )
    return ""


class _RedactingFilter(logging.Filter):
    """urllib3 logs request lines, which carry ?api_key=...; mask the key there."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "***"), ()
        return True


class ClientPolicy(pydantic.BaseModel):
    """How politely and how patiently a client asks: declared once, here; the Dagster resource takes
    these fields as its own config. Bounds are checked on construction, naming the field."""

    model_config = pydantic.ConfigDict(frozen=True)

    rate_limit_per_s: float = Field(default=35.0, gt=0, description="Client-side limit, under TMDb's ~40 requests/s.")
    burst: int = Field(default=4, ge=1, description="Requests the rate limiter lets through at once.")
    max_workers: int = Field(default=8, ge=1, le=64, description="Concurrent requests for details and posters.")
    timeout_s: float = Field(default=10.0, gt=0, description="Deadline of one request, body included.")
    max_retries: int = Field(default=6, ge=0, description="Retries of a request after 429, 5xx or a timeout.")
    backoff_base_s: float = Field(default=0.5, ge=0, description="First retry's pause; doubles each retry.")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Longest pause between retries.")
    max_retry_after_s: float = Field(
        default=60.0, ge=0, description="Longest pause a 429's Retry-After may impose on the client."
    )


DEFAULT_POLICY = ClientPolicy()


class TMDbClient:
    """Talks to TMDb (or anything that answers like it) at ``api_url``.

    ``token`` is TMDb's API read-access token (sent as a Bearer header); ``api_key`` the
    v3 key (sent as a query parameter). ``credential_hint`` names what a user should set
    when the credential is missing or refused.
    """

    def __init__(
        self,
        api_url: str = TMDB_API_URL,
        *,
        token: str | None = None,
        api_key: str | None = None,
        cache_dir: Path | None = None,
        policy: ClientPolicy = DEFAULT_POLICY,
        credential_hint: str = f"{TOKEN_ENV} (or {API_KEY_ENV})",
        image_base_url: str | None = None,
    ):
        if not token and not api_key:
            raise TMDbAuthError(f"no TMDb credential: set {credential_hint}")
        self.api_url = api_url.rstrip("/")
        # Where posters live when the server says so itself (a replay); else from /configuration.
        self.image_base_url = image_base_url
        self._token = token
        self._api_key = api_key
        self._secrets = [s for s in (token, api_key) if s]
        self.credential_hint = credential_hint
        self.cache = ResponseCache(cache_dir) if cache_dir else None
        self.policy = policy
        self.limiter = RateLimiter(policy.rate_limit_per_s, policy.burst)
        self.stats = ClientStats()
        self._stats_lock = threading.Lock()
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(policy.max_workers, 4), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"Accept": "application/json", "User-Agent": "genre-pipeline/0.1"})
        if api_key:
            self._log_filter = _RedactingFilter(api_key)
            logging.getLogger("urllib3.connectionpool").addFilter(self._log_filter)

    # --- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        self.session.close()
        if self._api_key:
            logging.getLogger("urllib3.connectionpool").removeFilter(self._log_filter)

    def __enter__(self) -> "TMDbClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TMDbClient(api_url={self.api_url!r}, credential=***)"

    # --- public API ----------------------------------------------------------------
    def get_json(self, path: str, params: dict | None = None, *, use_cache: bool = True) -> dict:
        """GET ``{api_url}{path}``; served from the cache when there, stored in it after."""
        params = dict(params or {})
        key = ResponseCache.key(path, params) if self.cache else None
        if self.cache and use_cache:
            cached = self.cache.get(key)
            if cached is not None:
                self._count(cache_hits=1)
                return json.loads(cached)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        if not self._token:
            params["api_key"] = self._api_key
        body = self._request(f"{self.api_url}{path}", params, headers, label=path)
        try:
            payload = json.loads(body)
        except ValueError:
            raise TMDbError(f"TMDb returned a body that is not JSON for {path}") from None
        if self.cache:
            self.cache.put(key, body)
        return payload

    def get_bytes(self, url: str) -> bytes:
        """GET an absolute URL (an image) without the credential: image hosts are not the API."""
        return self._request(url, {}, {"Accept": "image/*"}, label=url)

    def map_concurrent(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R | BaseException]]:
        """Apply ``fn`` with at most ``max_workers`` in flight; yields (item, result or error) as done."""
        items = list(items)
        with ThreadPoolExecutor(max_workers=self.policy.max_workers, thread_name_prefix="tmdb") as pool:
            window: dict = {}
            iterator = iter(items)

            def submit_next() -> bool:
                item = next(iterator, _END)
                if item is _END:
                    return False
                window[pool.submit(fn, item)] = item
                return True

            # Bounded submission keeps memory flat and lets an interrupt stop quickly.
            for _ in range(self.policy.max_workers * 2):
                if not submit_next():
                    break
            while window:
                done = next(iter(wait(list(window), return_when=FIRST_COMPLETED)[0]))
                item = window.pop(done)
                error = done.exception()
                yield item, (error if error is not None else done.result())
                submit_next()

    # --- internals -----------------------------------------------------------------
    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _count(self, **fields: int) -> None:
        with self._stats_lock:
            for name, value in fields.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def _fail(self, kind: str) -> None:
        with self._stats_lock:
            self.stats.failures[kind] += 1

    def _retry(self, reason: str) -> None:
        with self._stats_lock:
            self.stats.retries += 1
            self.stats.retry_reasons[reason] += 1

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.policy.backoff_max_s, self.policy.backoff_base_s * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        """The whole body, or requests.Timeout once ``deadline`` passes: a server that trickles bytes
        cannot hold a call past timeout_s (each socket read is also bounded by timeout_s)."""
        chunks = []
        with response:
            while chunk := response.raw.read1(64 * 1024, decode_content=True):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise requests.Timeout("deadline passed while reading the body")
            if time.monotonic() > deadline:
                raise requests.Timeout("deadline passed while reading the body")
        return b"".join(chunks)

    def _request(self, url: str, params: dict, headers: dict, *, label: str) -> bytes:
        """The body of a successful GET, after the retries 429, 5xx, timeouts and broken connections
        are worth; any other failure raises at once."""
        label = self.redact(label)
        for attempt in range(self.policy.max_retries + 1):
            self.limiter.acquire()
            self._count(requests=1)
            deadline = time.monotonic() + self.policy.timeout_s
            try:
                response = self.session.get(
                    url, params=params, headers=headers, timeout=self.policy.timeout_s, stream=True
                )
                body = self._read_body(response, deadline)
            except (requests.Timeout, urllib3.exceptions.TimeoutError):
                kind, last_problem = "timeout", f"no complete answer within {self.policy.timeout_s:g}s"
            except (
                requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError,
            ) as error:
                kind, last_problem = "connection", f"connection failed ({type(error).__name__})"
                cause = _cannot_connect(error)
                if cause:
                    if attempt + 1 < UNREACHABLE_ATTEMPTS:
                        self._retry("unreachable")
                        time.sleep(1.0)
                        continue
                    self._fail("unreachable")
                    host = urlsplit(url).hostname
                    raise TMDbUnreachable(
                        f"cannot reach TMDb at {host}: {cause}, {UNREACHABLE_ATTEMPTS} attempts. Check this "
                        "machine's network, DNS and proxy settings, and the address in TMDB_BASE_URL if set; offline, "
                        "use a snapshot folder (GENRE_PIPELINE_SNAPSHOT) or the demo catalog (no credential)."
                    ) from None
            else:
                self._count(bytes_received=len(body))
                status = response.status_code
                if status < 400:
                    return body
                if status == 401:
                    self._fail("auth")
                    raise TMDbAuthError(
                        f"TMDb refused the credential (HTTP 401{_tmdb_status(body)}) for {label}: "
                        f"check {self.credential_hint}"
                    )
                if status == 404:
                    self._fail("not_found")
                    raise TMDbNotFound(f"not found (HTTP 404) at {label}")
                if status == 429:
                    kind, last_problem = "rate_limited", "HTTP 429"
                    asked = _retry_after_s(response)
                    # A server asking for a day's pause would otherwise stop every thread for a day.
                    wait = min(asked, self.policy.max_retry_after_s) if asked is not None else self._backoff(attempt)
                    if asked is not None and asked > self.policy.max_retry_after_s:
                        last_problem += f" (Retry-After {asked:g}s, waited at most {self.policy.max_retry_after_s:g}s)"
                    self.limiter.pause_until(time.monotonic() + wait)
                    if attempt < self.policy.max_retries:
                        self._retry(kind)
                        continue
                elif status >= 500:
                    kind, last_problem = "server_error", f"HTTP {status}"
                else:
                    self._fail(f"http_{status}")
                    raise TMDbError(f"HTTP {status}{_tmdb_status(body)} at {label}")
            if attempt < self.policy.max_retries:
                self._retry(kind)
                delay = self._backoff(attempt)
                logger.debug("retrying %s in %.2fs after %s", label, delay, last_problem)
                time.sleep(delay)
        self._fail(kind)
        raise TMDbUnavailable(
            f"gave up on {label} after {self.policy.max_retries + 1} attempts: {last_problem}", kind=kind
        )


_END = object()


def _tmdb_status(body: bytes) -> str:
    try:
        payload = json.loads(body)
        return f", TMDb status_code {payload['status_code']}: {payload.get('status_message', '')}"
    except (ValueError, KeyError, TypeError):
        return ""


def _retry_after_s(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None
