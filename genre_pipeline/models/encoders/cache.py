"""Cached embeddings: computed once per (encoder, content), recomputed only for new or changed movies."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from genre_pipeline.files import atomic_write_bytes, content_key
from genre_pipeline.models.encoders import EncoderRef, build_encoder

log = logging.getLogger(__name__)

# What np.load raises on a truncated or corrupted .npz (a zip whose directory or a member's CRC is wrong).
_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


class DamagedEmbeddings(ValueError):
    """An embeddings file that is not whole: truncated, corrupted, or with columns of different lengths."""


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
        """The file at ``path``, read whole (every member's CRC checked), or DamagedEmbeddings."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist yet: materialize the embeddings asset first")
        try:
            with np.load(path, allow_pickle=False) as data:
                loaded = cls(data["ids"], data["keys"], data["vectors"])
        except _UNREADABLE as error:
            raise DamagedEmbeddings(
                f"{path} is not a whole embeddings file ({type(error).__name__}: {error}): "
                "materialize the embeddings asset again (it sets the file aside and encodes its movies again)"
            ) from error
        if not len(loaded.ids) == len(loaded.keys) == len(loaded.vectors):
            raise DamagedEmbeddings(
                f"{path} has {len(loaded.ids)} ids, {len(loaded.keys)} keys, {len(loaded.vectors)} vectors"
            )
        return loaded


def set_aside(path: Path, error: Exception) -> Path:
    """Rename a damaged file out of the way (kept for a post-mortem, never read again) and log it."""
    aside = Path(path).with_name(f"{Path(path).name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        Path(path).replace(aside)
    except FileNotFoundError:  # another step, reading it at the same time, set it aside first
        return aside
    log.warning("%s; set aside as %s, its rows are encoded again", error, aside.name)
    return aside


def readable(path: Path) -> Embeddings | None:
    """The embeddings file at ``path``; None when there is none, or when it is not whole (then set aside)."""
    if not Path(path).is_file():
        return None
    try:
        return Embeddings.load(path)
    except DamagedEmbeddings as error:
        set_aside(path, error)
        return None


@dataclasses.dataclass
class UpdateStats:
    computed: int
    reused: int
    seconds: float


def known_vectors(path: Path) -> dict[str, np.ndarray]:
    """content key -> vector of the embeddings file at ``path`` (empty when there is none)."""
    embeddings = readable(path)
    return dict(zip(embeddings.keys.tolist(), embeddings.vectors)) if embeddings is not None else {}


class Reusing:
    """An encoder that takes the known vector of each input whose content key (``files.content_key`` of
    a text or a poster's bytes) ``known`` holds, and encodes only the others. Everything else is the
    wrapped encoder's."""

    def __init__(self, encoder, known: Mapping[str, np.ndarray]):
        self.encoder, self.known = encoder, known
        self.reused = 0

    @staticmethod
    def unwrapped(encoder):
        return encoder.encoder if isinstance(encoder, Reusing) else encoder

    def __getattr__(self, name: str):
        return getattr(self.encoder, name)

    def encode(self, items: list, progress=None) -> np.ndarray:
        keys = [content_key(item) if isinstance(item, (str, bytes)) else None for item in items]
        todo = [n for n, key in enumerate(keys) if key not in self.known]
        result = np.zeros((len(items), self.encoder.dim), dtype=np.float32)
        if todo:
            result[todo] = self.encoder.encode([items[n] for n in todo], progress)
        for n, key in enumerate(keys):
            if key in self.known:
                result[n] = self.known[key]
        self.reused += len(items) - len(todo)
        return result


def _cached_rows(sources: list[Embeddings]) -> dict[tuple[int, str], np.ndarray]:
    """(id, content key) -> vector over ``sources``; a later source wins."""
    return {(int(i), str(k)): v for e in sources for i, k, v in zip(e.ids, e.keys, e.vectors)}


def _existing(paths) -> list[Embeddings]:
    return [e for e in map(readable, paths) if e is not None]


def _missing(ids: list[int], keys: list[str], known) -> list[int]:
    """Positions in ``ids`` whose (id, content key) is not in ``known``."""
    return [n for n, (i, k) in enumerate(zip(ids, keys)) if (int(i), k) not in known]


def pending(path: Path, ids: list[int], keys: list[str]) -> np.ndarray:
    """Positions in ``ids`` whose (id, key) the embeddings file at ``path`` lacks: what needs encoding."""
    embeddings = readable(path)
    cached = set() if embeddings is None else {(int(i), str(k)) for i, k in zip(embeddings.ids, embeddings.keys)}
    return np.asarray(_missing(ids, keys, cached), dtype=np.int64)


def update_embeddings(
    path: Path,
    ids: list[int],
    keys: list[str],
    inputs: list,
    encode: Callable[[list], np.ndarray],
    dim: Callable[[], int],
    also_from: tuple[Path, ...] = (),
) -> tuple[Embeddings, UpdateStats]:
    """Embeddings for ``ids``, reusing rows of the file at ``path`` (and of the files ``also_from``)
    whose key still matches.

    ``encode`` is called once, on the inputs that need it; ``dim`` gives the width when
    nothing was cached before and nothing needs computing."""
    cached = _cached_rows(_existing([path, *also_from]))
    todo = _missing(ids, keys, cached)
    started = time.perf_counter()
    fresh = encode([inputs[n] for n in todo]) if todo else None
    seconds = time.perf_counter() - started
    width = fresh.shape[1] if fresh is not None else len(next(iter(cached.values()))) if cached else dim()
    vectors = np.zeros((len(ids), width), dtype=np.float32)
    fresh_rows = {n: r for r, n in enumerate(todo)}
    for n, (i, k) in enumerate(zip(ids, keys)):
        vectors[n] = fresh[fresh_rows[n]] if n in fresh_rows else cached[(int(i), k)]
    result = Embeddings(np.asarray(ids, dtype=np.int64), np.asarray(keys, dtype="U40"), vectors)
    result.save(path)
    return result, UpdateStats(len(todo), len(ids) - len(todo), seconds)


def _rates(computed: int, encode_s: float, forward_s: float) -> dict:
    """Embeddings per second, and beside it the encoder's forward pass alone, both from this update."""
    rates = {"embeddings_per_s": round(computed / encode_s, 1) if computed and encode_s else 0.0}
    if computed and forward_s:
        raw = computed / forward_s
        rates.update(raw_forward_per_s=round(raw, 1), throughput_ratio=round(rates["embeddings_per_s"] / raw, 3))
    return rates


def refresh(
    path: Path,
    ref: EncoderRef,
    *,
    device: str,
    batch_size: int,
    ids: list,
    keys: list,
    inputs: list,
    progress=None,
    also_from: tuple[Path, ...] = (),
) -> dict:
    """The embeddings file of one encoder brought up to date for ``ids`` (``keys``: each input's content
    key), also reusing the rows of the files ``also_from``; the encoder loads only if something needs
    encoding. Returns the figures of the update."""
    encoder = None

    def loaded():
        nonlocal encoder
        encoder = encoder or build_encoder(ref, device=device, batch_size=batch_size)
        return encoder

    embeddings, stats = update_embeddings(
        path, ids, keys, inputs, lambda batch: loaded().encode(batch, progress), lambda: loaded().dim, also_from
    )
    forward_s = encoder.forward_seconds if encoder is not None else 0.0
    return {
        "encoder": ref.name,
        # The backend that encoded this run's new inputs (after any fallback), else the configured one.
        "backend": encoder.backend if encoder is not None else ref.backend,
        "dim": int(embeddings.vectors.shape[1]),
        "embedded": len(ids),
        "computed": stats.computed,
        "reused": stats.reused,
        "encode_s": round(stats.seconds, 2),
        "forward_s": round(forward_s, 2),
        **_rates(stats.computed, stats.seconds, forward_s),
        "keys": embeddings.keys,
    }


def shard_file(path: Path, shard: int) -> Path:
    """Where shard ``shard`` of an update of the embeddings file ``path`` keeps what it encoded."""
    return path.with_name(f"{path.stem}.shard-{shard}.npz")


def _shard_stats_file(path: Path, shard: int) -> Path:
    return shard_file(path, shard).with_suffix(".json")


def refresh_shard(
    path: Path, ref: EncoderRef, *, shard: int, shards: int, worker: str, ids: list, keys: list, inputs: list, **options
) -> dict:
    """Shard ``shard`` of ``shards`` of an update of the embeddings file at ``path``: encodes its share
    of the movies the file lacks into ``shard_file`` (whose rows an earlier attempt of the shard left
    are reused), for ``merge_shards``. Every shard computes the same list of what is missing, so they
    need nothing from each other and can run on different workers. ``options``: those of ``refresh``."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}: expected 0 <= shard < shards")
    mine = np.array_split(pending(path, ids, keys), shards)[shard]
    if len(mine):
        figures = refresh(
            shard_file(path, shard),
            ref,
            ids=[ids[n] for n in mine],
            keys=[keys[n] for n in mine],
            inputs=[inputs[n] for n in mine],
            **options,
        )
    else:  # nothing new for this shard: no encoder to load, no file to write
        figures = {"backend": ref.backend, "embedded": 0, "computed": 0, "reused": 0, "encode_s": 0.0, "forward_s": 0.0}
    kept = {k: v for k, v in figures.items() if k not in ("keys", "encoder", "dim")}
    stats = {"shard": shard, "worker": worker, **kept}
    atomic_write_bytes(_shard_stats_file(path, shard), json.dumps(stats).encode())
    return stats


def merge_shards(path: Path, ref: EncoderRef, *, shards: int, ids: list, keys: list, inputs: list, **options) -> dict:
    """The embeddings file at ``path`` brought up to date for ``ids`` from the shards' files (anything
    still missing is encoded here), which are then removed. Returns the figures of the whole update,
    with each shard's under ``shards``."""
    files = tuple(shard_file(path, n) for n in range(shards))
    figures = refresh(path, ref, ids=ids, keys=keys, inputs=inputs, also_from=files, **options)
    by_shard = [json.loads(p.read_text()) for n in range(shards) if (p := _shard_stats_file(path, n)).is_file()]
    for n in range(shards):
        shard_file(path, n).unlink(missing_ok=True)
        _shard_stats_file(path, n).unlink(missing_ok=True)
    parts = [figures, *by_shard]
    computed, seconds, forward = (sum(p[k] for p in parts) for k in ("computed", "encode_s", "forward_s"))
    for key in ("raw_forward_per_s", "throughput_ratio"):
        figures.pop(key, None)
    figures.update(
        backend=next((p["backend"] for p in parts if p["computed"]), figures["backend"]),
        computed=computed,
        reused=len(ids) - computed,
        encode_s=round(seconds, 2),
        forward_s=round(forward, 2),
        **_rates(computed, seconds, forward),
        shards=by_shard,
    )
    return figures
