"""Cached embeddings: computed once per (encoder, content), recomputed only for new or changed movies."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from pathlib import Path
from typing import Callable

import numpy as np

from genre_pipeline.files import atomic_write_bytes
from genre_pipeline.models.encoders import EncoderRef, build_encoder


@dataclasses.dataclass
class Embeddings:
    ids: np.ndarray
    keys: np.ndarray  # content hash per row: the text, or the poster file's bytes
    vectors: np.ndarray

    def by_id(self) -> dict[int, int]:
        return {int(i): row for row, i in enumerate(self.ids)}

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, ids=self.ids, keys=self.keys, vectors=self.vectors)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "Embeddings":
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist yet: materialize the embeddings asset first")
        with np.load(path, allow_pickle=False) as data:
            return cls(data["ids"], data["keys"], data["vectors"])


@dataclasses.dataclass
class UpdateStats:
    computed: int
    reused: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.computed / self.seconds if self.computed and self.seconds else 0.0


def content_key(data: bytes | str) -> str:
    return hashlib.sha1(data.encode() if isinstance(data, str) else data).hexdigest()


def update_embeddings(
    path: Path,
    ids: list[int],
    keys: list[str],
    inputs: list,
    encode: Callable[[list], np.ndarray],
    dim: Callable[[], int],
) -> tuple[Embeddings, UpdateStats]:
    """Embeddings for ``ids``, reusing rows of the file at ``path`` whose key still matches.

    ``encode`` is called once, on the inputs that need it; ``dim`` gives the width when
    nothing was cached before and nothing needs computing."""
    previous = Embeddings.load(path) if Path(path).is_file() else None
    cached = {}
    if previous is not None:
        cached = {(int(i), str(k)): row for row, (i, k) in enumerate(zip(previous.ids, previous.keys))}
    todo = [n for n, (i, k) in enumerate(zip(ids, keys)) if (int(i), k) not in cached]
    started = time.perf_counter()
    fresh = encode([inputs[n] for n in todo]) if todo else None
    seconds = time.perf_counter() - started
    width = fresh.shape[1] if fresh is not None else previous.vectors.shape[1] if previous is not None else dim()
    vectors = np.zeros((len(ids), width), dtype=np.float32)
    fresh_rows = {n: r for r, n in enumerate(todo)}
    for n, (i, k) in enumerate(zip(ids, keys)):
        vectors[n] = fresh[fresh_rows[n]] if n in fresh_rows else previous.vectors[cached[(int(i), k)]]
    result = Embeddings(np.asarray(ids, dtype=np.int64), np.asarray(keys, dtype="U40"), vectors)
    result.save(path)
    return result, UpdateStats(len(todo), len(ids) - len(todo), seconds)


def _throughput(stats: UpdateStats, encoder) -> dict:
    """Embeddings per second beside the encoder's forward pass alone, both from this run."""
    if not stats.computed or encoder is None or not encoder.forward_seconds:
        return {}
    raw = stats.computed / encoder.forward_seconds
    return {"raw_forward_per_s": round(raw, 1), "throughput_ratio": round(stats.per_second / raw, 3)}


def refresh(
    path: Path, ref: EncoderRef, *, device: str, batch_size: int, ids: list, keys: list, inputs: list, progress=None
) -> dict:
    """The embeddings file of one encoder brought up to date for ``ids`` (``keys``: each input's content
    key); the encoder loads only if something needs encoding. Returns the figures of the update."""
    encoder = None

    def loaded():
        nonlocal encoder
        encoder = encoder or build_encoder(ref, device=device, batch_size=batch_size)
        return encoder

    embeddings, stats = update_embeddings(
        path, ids, keys, inputs, lambda batch: loaded().encode(batch, progress), lambda: loaded().dim
    )
    return {
        "encoder": ref.name,
        # The backend that encoded this run's new inputs (after any fallback), else the configured one.
        "backend": encoder.backend if encoder is not None else ref.backend,
        "dim": int(embeddings.vectors.shape[1]),
        "embedded": len(ids),
        "computed": stats.computed,
        "reused": stats.reused,
        "encode_s": round(stats.seconds, 2),
        "embeddings_per_s": round(stats.per_second, 1),
        "keys": embeddings.keys,
        **_throughput(stats, encoder),
    }
