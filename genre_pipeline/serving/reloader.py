"""The model a server answers with: the registered champion, reloaded when the ``champion`` alias moves.

A request takes the current predictor once and keeps it to the end, so a reload never changes the
model under a request in flight; the new version is loaded and warmed beside the old one, then
swapped in with one assignment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mlflow import MlflowClient

from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.champion.registry import champion_version

log = logging.getLogger(__name__)

WARM_UP_ROW = {"overview": "A detective hunts a killer through a rain-soaked city.", "tagline": "Trust no one."}


class ServedModel:
    """One loaded version. The app's MicroBatcher is its only caller once it serves, from one worker
    thread: predictions run one at a time (the encoders' runtimes already use every core, and the
    pyfunc model is not documented as thread-safe)."""

    def __init__(self, predictor: GenrePredictor):
        self.predictor = predictor
        self.loaded_at = time.time()

    @property
    def version(self) -> str:
        return self.predictor.info["version"]

    def predict_rows(self, rows: list[dict]):
        # Every row passed the request checks (serving.inputs: the model's own field limits), and its
        # poster, if any, was verified there: the model checks and decodes nothing again.
        return self.predictor.predict_rows(rows, inputs_checked=True)


class ChampionReloader:
    """Holds the served champion. A daemon thread loads it after start-up (the server answers
    ``/health/live`` meanwhile, and ``/health/ready`` says not yet), then polls the registry every
    ``poll_interval_s`` seconds; a moved alias loads the new version in that thread while requests keep
    being answered by the old one. ``on_load(served)`` is told each version that starts serving (the
    app sets it to update its metrics)."""

    def __init__(
        self,
        tracking_uri: str,
        poll_interval_s: float = 10.0,
        load: Callable[[str, str | None], GenrePredictor] = GenrePredictor.from_registry,
    ):
        if poll_interval_s <= 0:
            raise ValueError(f"the poll interval must be positive, got {poll_interval_s}")
        self.tracking_uri, self.poll_interval_s, self._load = tracking_uri, poll_interval_s, load
        self.on_load: Callable[[ServedModel], None] = lambda served: None
        self.current: ServedModel | None = None  # None until the first load succeeds
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loaded(self, version: str | None) -> ServedModel:
        served = ServedModel(self._load(self.tracking_uri, version))
        served.predict_rows([WARM_UP_ROW])  # the first call pays for graph set-up, not a user
        log.info("serving %s v%s", served.predictor.info["model"], served.version)
        return served

    def check(self) -> bool:
        """Load the champion if none is loaded or the alias moved; True when a new version is now served."""
        version = champion_version(MlflowClient(self.tracking_uri, self.tracking_uri), self.tracking_uri)
        if self.current is not None and version == self.current.version:
            return False
        if self.current is not None:
            log.info("champion moved from v%s to v%s: loading it", self.current.version, version)
        self.current = self._loaded(version)
        self.on_load(self.current)
        return True

    def _poll(self) -> None:
        while True:
            try:
                self.check()
                self.last_error = None
            except Exception as error:
                # Any failure to load (a truncated file raises EOFError, BadZipFile, ...) must not end the
                # polling: keep serving the loaded version (if any); /health/ready reports why the new one is not.
                self.last_error = f"{type(error).__name__}: {error}"
                serving = f"still serving v{self.current.version}" if self.current else "no champion loaded yet"
                log.warning("champion load failed, %s: %s", serving, error)
            if self._stop.wait(self.poll_interval_s):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="champion-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_interval_s + 5)
