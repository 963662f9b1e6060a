"""What a TMDb client is made of besides its requests: the rate limiter its threads share, the raw
responses cached on disk, and the counts it reports."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

from genre_pipeline.files import atomic_write_bytes


class RateLimiter:
    """Spaces requests at ``rate_per_s`` across threads (GCRA), allowing a small burst."""

    def __init__(self, rate_per_s: float, burst: int = 4):
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.interval = 1.0 / rate_per_s
        self.tolerance = self.interval * max(burst - 1, 0)
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now - self.tolerance)
            self._next = start + self.interval
            wait = start - now
        if wait > 0:
            time.sleep(wait)

    def pause_until(self, monotonic_deadline: float) -> None:
        """Hold every thread back until the deadline (TMDb's 429 applies to the whole client)."""
        with self._lock:
            self._next = max(self._next, monotonic_deadline)


class ResponseCache:
    """Raw response bodies on disk, one file per request, written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(path: str, params: dict) -> str:
        canonical = path + "?" + urlencode(sorted((k, str(v)) for k, v in params.items() if k != "api_key"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> bytes | None:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, body: bytes) -> None:
        atomic_write_bytes(self._file(key), body)


@dataclasses.dataclass
class ClientStats:
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    bytes_received: int = 0
    retry_reasons: Counter = dataclasses.field(default_factory=Counter)
    failures: Counter = dataclasses.field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "bytes_received": self.bytes_received,
            "retry_reasons": dict(self.retry_reasons),
            "failures": dict(self.failures),
        }
