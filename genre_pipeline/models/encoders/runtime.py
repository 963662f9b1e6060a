"""Encoders at inference without PyTorch: the exported graph on ONNX Runtime, the tokenizer on the
``tokenizers`` library, and the poster transform in numpy. These are the only inference code of the
ONNX backends: training (through ``text.TextEncoder`` and ``image.ImageEncoder``, which export the
graphs) and serving run the same functions, so a served embedding is the trained-on one.

A logged classifier records, per encoder, which exported graph it ran on and the tokenizer
(``save_runtime``); ``load_runtime`` loads that without PyTorch when the graph is in this machine's
encoder cache (it is wherever the model was trained or served once).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from genre_pipeline import settings
from genre_pipeline.images import PosterBytes

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
IMAGE_SIZE = 224
RUNTIME_FILE = "runtime.json"
TOKENIZER_FILE = "tokenizer.json"


def session(graph_file: Path, *, memory_arena: bool = True):
    """An ONNX Runtime session on the CPU with every graph optimization, on ``settings.inference_threads()``
    threads: a serving process sets this to its share of the cores so that two workers do not fight.
    Without ``memory_arena`` each run frees what it allocated: for image graphs, whose batches of posters
    would otherwise grow the arena by hundreds of megabytes that it never gives back."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = memory_arena
    # Idle pool threads would otherwise spin for a while after each run, taking the cores from the
    # tokenizer, the poster decoding and the members that run between graph calls.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    threads = settings.inference_threads()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(graph_file), options, providers=["CPUExecutionProvider"])


def _resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Source indices, int16 fixed-point weights and their precision for an antialiased bilinear resize
    of one axis: PyTorch's uint8 kernel (a port of Pillow-SIMD), which torchvision's Resize runs."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    centers = scale * (np.arange(out_size) + 0.5)
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    count = np.minimum((centers + support + 0.5).astype(np.int64), in_size) - first
    tap = np.arange(int(count.max()))
    distance = np.abs((tap[None, :] + first[:, None] - centers[:, None] + 0.5) * inverse)
    weights = np.where((distance < 1.0) & (tap[None, :] < count[:, None]), 1.0 - distance, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total != 0)
    precision = 0
    while precision < 22 and int(0.5 + weights.max() * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    fixed = np.where(scaled < 0, scaled - 0.5, scaled + 0.5).astype(np.int64)
    return np.minimum(first[:, None] + tap[None, :], in_size - 1), fixed, precision


def _resize_axis(pixels: np.ndarray, size: int, axis: int) -> np.ndarray:
    index, weights, precision = _resize_taps(pixels.shape[axis], size)
    # One gather and multiply-add per tap (a handful) in int32: every sum stays below 255 * 2**15 * 2.
    shape = (1, size, 1) if axis == 1 else (size, 1, 1)
    summed = np.full((*pixels.shape[:axis], size, *pixels.shape[axis + 1 :]), 1 << (precision - 1), dtype=np.int32)
    weights = weights.astype(np.int32)
    for tap in range(index.shape[1]):
        summed += np.take(pixels, index[:, tap], axis=axis).astype(np.int32) * weights[:, tap].reshape(shape)
    return np.clip(summed >> precision, 0, 255).astype(np.uint8)


def resize_rgb(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """An (h, w, 3) uint8 image resized as torchvision's ``Resize(antialias=True)`` resizes a uint8
    tensor on the CPU, bit for bit (tested): horizontal pass, then vertical, each rounded to uint8."""
    if pixels.shape[1] != width:
        pixels = _resize_axis(pixels, width, 1)
    if pixels.shape[0] != height:
        pixels = _resize_axis(pixels, height, 0)
    return pixels


def poster_array(source) -> np.ndarray:
    """A path, bytes or PIL image as the (3, 224, 224) float32 input of an ImageNet encoder: resized,
    scaled to [0, 1] and ImageNet-normalized, exactly as ``image.image_transform()`` does with torch.
    Verified ``PosterBytes`` are not decoded again."""
    if isinstance(source, PosterBytes):
        source = source.verified.image
    if isinstance(source, Image.Image):
        pixels = np.asarray(source.convert("RGB"))
    else:
        data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
    scaled = resize_rgb(pixels, IMAGE_SIZE, IMAGE_SIZE).transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
    return (scaled - _MEAN) / _STD


@dataclasses.dataclass
class TextGraph:
    """Mean-pooled, L2-normalized sentence embeddings from an exported text graph."""

    session: object
    tokenizer_json: str
    max_length: int
    dim: int
    backend: str
    forward_seconds: float = 0.0  # in the graph alone, as TextEncoder.forward_seconds

    def __post_init__(self):
        from tokenizers import Tokenizer

        # Two copies: truncation is tokenizer state, and counting needs it off.
        self.tokenizer, self._counter = Tokenizer.from_str(self.tokenizer_json), Tokenizer.from_str(self.tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self._counter.no_padding()
        self._counter.no_truncation()

    def inputs(self, text: str) -> dict[str, np.ndarray]:
        encoding = self.tokenizer.encode(text)
        return {
            "input_ids": np.asarray([encoding.ids], dtype=np.int64),
            "attention_mask": np.asarray([encoding.attention_mask], dtype=np.int64),
        }

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens each whole text is, special tokens included, before truncation."""
        return [len(encoding.ids) for encoding in self._counter.encode_batch(texts)]

    def encode(self, texts: list[str], progress=None) -> np.ndarray:
        """Embeddings in the order given, one text per run: int8 activations are quantized with one
        scale per tensor, so in a batch a text's embedding would depend on the texts beside it (and
        training would not see what serving sees); unpadded single texts also ran faster than batches.
        The next text is tokenized while the current one runs."""
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        with ThreadPoolExecutor(max_workers=1) as tokenizer_thread:
            for i, inputs in enumerate(tokenizer_thread.map(self.inputs, texts)):
                started = time.perf_counter()
                result[i] = self.session.run(None, inputs)[0][0]
                self.forward_seconds += time.perf_counter() - started
                if progress:
                    progress(i + 1, len(texts))
        return result


@dataclasses.dataclass
class ImageGraph:
    """Pooled ImageNet features of posters from an exported image graph."""

    session: object
    dim: int
    backend: str
    batch_size: int = 8  # posters per run: larger batches ran no faster per poster and held more memory
    forward_seconds: float = 0.0

    def encode(self, sources: list, progress=None) -> np.ndarray:
        """Features of each image (a path, bytes or PIL image); decoding overlaps the forward passes."""
        result = np.zeros((len(sources), self.dim), dtype=np.float32)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for start in range(0, len(sources), self.batch_size):
                batch = np.stack(list(pool.map(poster_array, sources[start : start + self.batch_size])))
                started = time.perf_counter()
                result[start : start + len(batch)] = self.session.run(None, {"images": batch})[0]
                self.forward_seconds += time.perf_counter() - started
                if progress:
                    progress(start + len(batch), len(sources))
        return result


def _record_dir(root: Path, key: str) -> Path:
    return root / "runtime" / key.replace("/", "__").replace("@", "--")


def save_runtime(key: str, graph_file: Path, encoder: TextGraph | ImageGraph, root: Path) -> None:
    """Record in a classifier folder which exported graph encoder ``key`` runs on (its export folder in
    the encoder cache, by weights hash) and, for text, its tokenizer and length."""
    directory = _record_dir(root, key)
    directory.mkdir(parents=True, exist_ok=True)
    graph = graph_file.resolve().relative_to((settings.encoder_cache_dir() / "onnx").resolve())
    record = {"graph": graph.as_posix(), "backend": encoder.backend, "dim": encoder.dim}
    if isinstance(encoder, TextGraph):
        record["max_length"] = encoder.max_length
        (directory / TOKENIZER_FILE).write_text(encoder.tokenizer_json)
    (directory / RUNTIME_FILE).write_text(json.dumps(record))


def load_runtime(key: str, root: Path) -> TextGraph | ImageGraph | None:
    """The encoder a classifier folder recorded, on ONNX Runtime without PyTorch; None when the folder
    has no record (a model logged before records, or one that ran on PyTorch) or this machine's encoder
    cache lacks the graph (then the caller loads the encoder with PyTorch, which exports it again)."""
    directory = _record_dir(root, key)
    if not (directory / RUNTIME_FILE).is_file():
        return None
    record = json.loads((directory / RUNTIME_FILE).read_text())
    graph_file = settings.encoder_cache_dir() / "onnx" / record["graph"]
    if not graph_file.is_file():
        log.info("%s: its graph %s is not in this machine's encoder cache; it is exported again", key, record["graph"])
        return None
    if (directory / TOKENIZER_FILE).is_file():
        tokenizer_json = (directory / TOKENIZER_FILE).read_text()
        return TextGraph(session(graph_file), tokenizer_json, record["max_length"], record["dim"], record["backend"])
    return ImageGraph(session(graph_file, memory_arena=False), record["dim"], record["backend"])
