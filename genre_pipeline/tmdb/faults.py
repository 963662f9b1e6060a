"""What the replay server answers when something goes wrong: TMDb's own error bodies, and the faults it
injects as a chaos test asks for them (rate limits, server errors, slow and dripping answers, broken
posters: always the same files for a seed)."""

from __future__ import annotations

import dataclasses
import hashlib

# TMDb's error bodies, as its API sends them.
INVALID_KEY = {
    "status_code": 7,
    "status_message": "Invalid API key: You must be granted a valid key.",
    "success": False,
}
NOT_FOUND = {"status_code": 34, "status_message": "The resource you requested could not be found.", "success": False}
INVALID_PAGE = {
    "status_code": 22,
    "status_message": "Invalid page: Pages start at 1 and max at 500. They are expected to be an integer.",
    "success": False,
}
RATE_LIMITED = {
    "status_code": 25,
    "status_message": "Your request count (#) is over the allowed limit of (40).",
    "success": False,
}
INTERNAL_ERROR = {
    "status_code": 11,
    "status_message": "Internal error: Something went wrong, contact TMDb.",
    "success": False,
}


@dataclasses.dataclass
class Faults:
    """Faults to inject. Fractions are probabilities per request (per file for images).

    ``max_per_path`` caps how many faults one path gets, so that a test can say
    "every request fails once, then succeeds" and stay deterministic.
    """

    rate_limit_fraction: float = 0.0
    retry_after_s: float = 1.0
    server_error_fraction: float = 0.0
    slow_fraction: float = 0.0
    slow_s: float = 2.0
    drip_fraction: float = 0.0  # answered one byte at a time, every drip_interval_s
    drip_interval_s: float = 2.0
    truncated_image_fraction: float = 0.0
    corrupt_image_fraction: float = 0.0
    max_per_path: int | None = None
    seed: int = 0

    def broken_image(self, name: str) -> str | None:
        """'corrupt' or 'truncated' for a poster file this server breaks (always the same ones), else None."""
        if _file_selected(name, self.corrupt_image_fraction, self.seed, "corrupt"):
            return "corrupt"
        if _file_selected(name, self.truncated_image_fraction, self.seed, "truncated"):
            return "truncated"
        return None


def _file_selected(name: str, fraction: float, seed: int, salt: str) -> bool:
    """Deterministic per-file choice, so that a broken poster stays broken on every request."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{salt}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
