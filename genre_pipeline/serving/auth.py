"""Optional API keys and a rate limit per caller.

Keys come from a file (one per line; blank lines and ``#`` comments ignored) or from
``GENRE_PIPELINE_API_KEYS`` (comma-separated). A request sends one as ``Authorization: Bearer KEY``
or ``X-API-Key: KEY``; it is compared with every key in constant time. A key never reaches a log
or a metric: callers are named by a short hash of their key (or by their address when the server is
open). The rate limit is a token bucket per caller: ``rate_per_s`` sustained, ``burst`` at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import math
import threading
import time
from pathlib import Path

from genre_pipeline import settings

MIN_KEY_LENGTH = 16
MAX_TRACKED_CALLERS = 10_000


class ApiKeysError(ValueError):
    """A key file or variable that cannot be used."""


def load_keys(keys_file: Path | None, env_keys: list[str] | None = None) -> list[str]:
    """The accepted keys: the file's and ``env_keys`` (by default ``GENRE_PIPELINE_API_KEYS``'s); a key
    shorter than 16 characters is refused (it would be guessable)."""
    env_keys = settings.serving_api_keys() if env_keys is None else env_keys
    keys = []
    if keys_file is not None:
        try:
            text = Path(keys_file).read_text()
        except OSError as error:
            raise ApiKeysError(f"cannot read the API keys file {keys_file}: {error.strerror}") from None
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    keys += env_keys
    short = sum(len(key) < MIN_KEY_LENGTH for key in keys)
    if short:
        raise ApiKeysError(f"{short} API key(s) shorter than {MIN_KEY_LENGTH} characters: use long random keys")
    return keys


def key_id(key: str) -> str:
    """How logs and limits name a key: 8 hex digits of its SHA-256, which do not reveal it."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass
class Refusal:
    status: int  # 401 or 429
    message: str
    headers: dict[str, str]


class Gatekeeper:
    """Checks a request's key (when keys are configured) and its caller's rate."""

    def __init__(self, keys: list[str], rate_per_s: float | None = None, burst: int | None = None):
        self._keys = [key.encode() for key in keys]
        self.rate_per_s = rate_per_s
        self.burst = burst or (max(1, math.ceil(rate_per_s)) if rate_per_s else None)
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def requires_key(self) -> bool:
        return bool(self._keys)

    def _matching_key(self, given: str) -> str | None:
        given_bytes, match = given.encode(), None
        for key in self._keys:  # every key compared, so the time does not tell which one matched
            if hmac.compare_digest(given_bytes, key):
                match = key
        return match.decode() if match is not None else None

    def check(self, headers, client: str) -> tuple[str, Refusal | None]:
        """(the caller's name, None) when the request may go on, else the refusal to answer."""
        caller = client
        if self._keys:
            given = _given_key(headers)
            key = self._matching_key(given) if given else None
            if key is None:
                why = "an API key is required" if not given else "the API key is not valid"
                return caller, Refusal(
                    401,
                    f"{why}: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                    {"WWW-Authenticate": 'Bearer realm="genre_pipeline"'},
                )
            caller = key_id(key)
        wait = self._take(caller)
        if wait:
            return caller, Refusal(
                429,
                f"rate limit of {self.rate_per_s:g} requests per second (burst {self.burst}) reached; retry later",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return caller, None

    def _take(self, caller: str) -> float:
        """0 when the caller had a token, else seconds until it has one."""
        if not self.rate_per_s:
            return 0.0
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > MAX_TRACKED_CALLERS:  # forget callers whose bucket has refilled
                full_after = self.burst / self.rate_per_s
                self._buckets = {c: (t, a) for c, (t, a) in self._buckets.items() if now - a < full_after}
            tokens, at = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            if tokens >= 1:
                self._buckets[caller] = (tokens - 1, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1 - tokens) / self.rate_per_s


def _given_key(headers) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key", "").strip() or None
