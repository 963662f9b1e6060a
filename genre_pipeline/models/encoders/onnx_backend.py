"""Encoder inference on ONNX Runtime: exported once per weights, cached, and checked against PyTorch.

Backends: ``torch`` (eager PyTorch fp32), ``onnx`` (the exported graph, fp32, ONNX Runtime's
graph optimizations) and ``onnx-int8`` (that graph with dynamic int8 weights, per output
channel, on every matrix multiplication with a constant weight except the feed-forward
down-projections). Those take the GELU outputs, whose outliers a per-tensor activation scale
cannot hold: quantizing them too drifts all-mpnet-base-v2's embeddings to a mean cosine of
0.88 against fp32, excluding them keeps 0.99. Convolutions stay fp32: dynamic int8 convolutions
measured slower than fp32 on EfficientNet, and drifted. A graph whose 8-bit weights fail the guard
is quantized again with 7-bit weights: x86 CPUs without VNNI multiply uint8 activations by int8
weights in 16-bit sums that saturate, which turned all-mpnet-base-v2 into noise (mean cosine 0.00
to fp32) on an AVX2 machine; with 7-bit weights the sums fit (0.99 there, and 1.3x the fp32 graph's speed).

Each graph is exported from the weights in memory and cached under a folder named by a hash of
those weights, so changed weights (a fine-tuned encoder, a new package version) get a new export.
On export the graph runs a fixed sample beside PyTorch fp32; a graph whose outputs drift beyond
the cosine guard is never used: the encoder falls back to the next slower backend and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from genre_pipeline import settings
from genre_pipeline.models.encoders import runtime

if TYPE_CHECKING:  # torch loads only where an encoder does
    import torch

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
# The fastest backend that met the accuracy guard on the snapshot (benchmarks/embeddings.py).
DEFAULT_BACKEND = "onnx-int8"
# Bump when the export, the quantization or a guard sample changes: every cached graph is then rebuilt.
RECIPE_VERSION = 2
# Cosine to PyTorch fp32 on the guard sample. Calibrated on the snapshot: graphs that pass kept the
# text head's validation macro-F1 within 0.005 of fp32 (benchmarks/embeddings.py).
GUARD_MEAN_COSINE = 0.99
GUARD_MIN_COSINE = 0.97
GRAPH_FILE = "model.onnx"
GUARD_FILE = "guard.json"


class EncoderDrift(RuntimeError):
    """A fast backend's outputs differ from PyTorch fp32 beyond the accuracy guard."""


@dataclasses.dataclass(frozen=True)
class Guard:
    """How close a backend's embeddings are to PyTorch fp32's on the same inputs."""

    mean_cosine: float
    min_cosine: float

    @property
    def passed(self) -> bool:
        return self.mean_cosine >= GUARD_MEAN_COSINE and self.min_cosine >= GUARD_MIN_COSINE

    def describe(self) -> str:
        return (
            f"cosine to PyTorch fp32: mean {self.mean_cosine:.4f} (guard {GUARD_MEAN_COSINE}), "
            f"min {self.min_cosine:.4f} (guard {GUARD_MIN_COSINE})"
        )


def compare(reference: np.ndarray, candidate: np.ndarray) -> Guard:
    """Row-wise cosine between two sets of embeddings of the same inputs."""
    reference = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    candidate = candidate / np.maximum(np.linalg.norm(candidate, axis=1, keepdims=True), 1e-12)
    cosine = (reference * candidate).sum(axis=1)
    return Guard(float(cosine.mean()), float(cosine.min()))


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown encoder backend {name!r}: use one of {', '.join(BACKENDS)}")
    return name


def configured_backend(recorded: str | None = None) -> str:
    """The backend to serve with: ``GENRE_PIPELINE_ENCODER_BACKEND`` if set, else the one the model
    was trained with (``recorded``), else the default."""
    return check_backend(settings.encoder_backend_override() or recorded or DEFAULT_BACKEND)


def weights_digest(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: the cache key of the module's exported graphs."""
    digest = hashlib.blake2b(f"recipe {RECIPE_VERSION}".encode(), digest_size=16)
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _quantizable_matmuls(graph_file: Path) -> tuple[list[str], list[str]]:
    """(MatMul nodes with a constant 2-D weight, those of them whose weight narrows its input: [4h, h],
    a feed-forward down-projection)."""
    import onnx

    model = onnx.load(str(graph_file), load_external_data=False)
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type == "MatMul" and len(shapes.get(n.input[1], [])) == 2]
    narrowing = [node.name for node in weighted if shapes[node.input[1]][0] > shapes[node.input[1]][1]]
    return [node.name for node in weighted], narrowing


@contextlib.contextmanager
def _quiet_tools():
    """The exporter narrates each pass on stdout and at INFO, the quantizer on the root logger; our log
    says once that it is exporting, and their warnings still come through."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    # A filter on the root logger sees only what is logged on it directly (the quantizer's logging.info).
    chatter = logging.Filter()
    chatter.filter = lambda record: record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname
    logging.getLogger().addFilter(chatter)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints", category=UserWarning)
            yield
    finally:
        logging.getLogger().removeFilter(chatter)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export(module: torch.nn.Module, example: tuple, input_names: list[str], dynamic: tuple, target: Path) -> None:
    import torch

    program = torch.onnx.export(
        module.eval(),
        example,
        input_names=input_names,
        output_names=["encoder_output"],
        dynamic_shapes=dynamic,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.save(str(target))


def _quantize(fp32_file: Path, target: Path, *, weight_bits: int = 8) -> bool:
    """Dynamic int8 weights (``weight_bits`` 7: in half the range) on the graph's matrix
    multiplications; False if it has none to quantize."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weighted, down_projections = _quantizable_matmuls(fp32_file)
    if len(weighted) == len(down_projections):
        return False
    quantize_dynamic(
        str(fp32_file),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=weight_bits == 7,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=down_projections,
    )
    return True


def _quantize_within_guard(name: str, fp32_file: Path, target: Path, check: Callable[[Path], Guard]) -> Guard | None:
    """Quantize ``fp32_file`` into ``target`` with 8-bit weights, or with 7-bit ones when the 8-bit graph
    fails ``check`` (its guard) and the 7-bit one passes; the guard of the graph kept, or None when the
    graph has nothing the recipe quantizes. The guard file records the weights' bits."""
    with _quiet_tools():
        if not _quantize(fp32_file, target):
            return None
    guard = check(target)
    if not guard.passed:
        seven_bit = target.with_name(f"7-bit-{target.name}")
        with _quiet_tools():
            _quantize(fp32_file, seven_bit, weight_bits=7)
        reduced = check(seven_bit)
        log.info("%s int8, 8-bit weights: %s; 7-bit weights: %s", name, guard.describe(), reduced.describe())
        if reduced.passed:
            os.replace(seven_bit, target)
            _write_guard(target.parent, reduced, weight_bits=7)
            return reduced
        seven_bit.unlink()
    _write_guard(target.parent, guard, weight_bits=8)
    return guard


def _write_guard(folder: Path, guard: Guard, **recipe) -> None:
    (folder / GUARD_FILE).write_text(json.dumps({**dataclasses.asdict(guard), **recipe}))


def read_guard(folder: Path) -> Guard:
    """A backend folder's guard (its file also records an int8 graph's ``weight_bits``)."""
    record = json.loads((folder / GUARD_FILE).read_text())
    return Guard(record["mean_cosine"], record["min_cosine"])


@dataclasses.dataclass
class OnnxEncoder:
    """A loaded graph of one encoder, whose session gives what the PyTorch module's forward gives
    (``runtime.TextGraph`` and ``runtime.ImageGraph`` run it)."""

    backend: str
    graph_file: Path
    guard: Guard
    session: object


def _build(
    directory: Path,
    module: torch.nn.Module,
    example: tuple,
    input_names: list[str],
    dynamic: tuple,
    guard_inputs: dict[str, np.ndarray],
) -> None:
    """Export, quantize and check into ``directory`` atomically: a folder per backend with its graph
    and guard result; no ``onnx-int8`` folder when the graph has nothing the recipe quantizes."""
    import torch

    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as scratch:
        work = Path(scratch) / "graphs"
        (work / "onnx").mkdir(parents=True)
        (work / "onnx-int8").mkdir()
        with torch.inference_mode():
            reference = module(*(torch.from_numpy(guard_inputs[name]) for name in input_names)).float().numpy()

        def check(graph_file: Path) -> Guard:
            return compare(reference, runtime.session(graph_file).run(None, guard_inputs)[0])

        with _quiet_tools():
            _export(module, example, input_names, dynamic, work / "onnx" / GRAPH_FILE)
        _write_guard(work / "onnx", check(work / "onnx" / GRAPH_FILE))
        if (
            _quantize_within_guard(directory.name, work / "onnx" / GRAPH_FILE, work / "onnx-int8" / GRAPH_FILE, check)
            is None
        ):
            (work / "onnx-int8").rmdir()
        try:
            os.rename(work, directory)
        except OSError:
            if not directory.is_dir():  # else another process exported the same weights first
                raise


def exported(
    cache_name: str,
    module: torch.nn.Module,
    *,
    example: tuple,
    input_names: list[str],
    dynamic: tuple,
    guard_inputs: Callable[[], dict[str, np.ndarray]],
) -> tuple[Path, bool]:
    """The folder of ``module``'s graphs for its current weights, exported on first use, and whether
    this call exported it."""
    directory = settings.encoder_cache_dir() / "onnx" / f"{cache_name}-{weights_digest(module)}"
    if directory.is_dir():
        return directory, False
    log.info("exporting %s to ONNX into %s (once for these weights)", cache_name, directory)
    _build(directory, module, example, input_names, dynamic, guard_inputs())
    return directory, True


def load_graph(directory: Path, backend: str, memory_arena: bool = True) -> OnnxEncoder:
    """One backend's graph from an export folder; EncoderDrift if it failed the accuracy guard."""
    guard = read_guard(directory / backend)
    if not guard.passed:
        raise EncoderDrift(f"{directory.name} on {backend}: {guard.describe()}")
    graph_file = directory / backend / GRAPH_FILE
    return OnnxEncoder(backend, graph_file, guard, runtime.session(graph_file, memory_arena=memory_arena))


def fastest_available(
    cache_name: str, module: torch.nn.Module, backend: str, device: torch.device, memory_arena: bool = True, **graph
) -> OnnxEncoder | None:
    """The graph to run for the configured ``backend``, or None for PyTorch.

    CUDA keeps PyTorch. A graph that fails the guard gives way to the next slower backend, and a
    missing onnxruntime to PyTorch, each with a warning that names why."""
    if backend == "torch":
        return None
    if device.type != "cpu":
        log.info("%s runs on %s with PyTorch: the ONNX backends are for CPU", cache_name, device)
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning(
            "onnxruntime is not installed: %s runs on PyTorch fp32 instead of %s (pip install onnxruntime)",
            cache_name,
            backend,
        )
        return None
    directory, just_exported = exported(cache_name, module, **graph)
    # A graph's guard is measured once, when it is exported: that is when its failure is news. Every
    # later load (each predict call, each server start) falls back the same way and says so at info.
    drift_level = logging.WARNING if just_exported else logging.INFO
    for candidate in BACKENDS[BACKENDS.index(backend) : 0 : -1]:  # e.g. onnx-int8, then onnx
        if not (directory / candidate).is_dir():
            log.info("%s has no weights the %s recipe quantizes: it runs the fp32 graph", cache_name, candidate)
            continue
        try:
            return load_graph(directory, candidate, memory_arena)
        except EncoderDrift as drift:
            log.log(drift_level, "not using %s: %s", candidate, drift)
    log.warning("%s runs on PyTorch fp32: no ONNX graph met the accuracy guard", cache_name)
    return None


class BackendChoice:
    """Which backend an encoder's encode() runs on, settled at its first use (so after any fine-tuning):
    the requested one, or the one it fell back to."""

    requested_backend: str
    device: torch.device
    memory_arena = True  # see runtime.session
    forward_seconds: float
    _graph: OnnxEncoder | None = None
    _graph_loaded = False
    _runtime: runtime.TextGraph | runtime.ImageGraph | None = None

    @property
    def backend(self) -> str:
        graph = self._onnx_graph()
        return graph.backend if graph is not None else "torch"

    def _onnx_graph(self) -> OnnxEncoder | None:
        if not self._graph_loaded:
            cache_name, module, spec = self._export_spec()
            self._graph = fastest_available(
                cache_name, module, self.requested_backend, self.device, self.memory_arena, **spec
            )
            self._graph_loaded = True
        return self._graph

    def _export_spec(self) -> tuple[str, torch.nn.Module, dict]:
        """(cache name, the module to export, exported's keyword arguments)."""
        raise NotImplementedError

    def _runtime_on(self, graph: OnnxEncoder) -> runtime.TextGraph | runtime.ImageGraph:
        """The runtime encoder that runs ``graph``'s session (with a text encoder's tokenizer)."""
        raise NotImplementedError

    def runtime_encoder(self) -> runtime.TextGraph | runtime.ImageGraph | None:
        """This encoder's ONNX graph as ``runtime`` runs it, as a served model does; None on PyTorch."""
        graph = self._onnx_graph()
        if graph is not None and self._runtime is None:
            self._runtime = self._runtime_on(graph)
        return self._runtime

    def _encode_on_graph(self, items: list, progress) -> np.ndarray | None:
        """``items`` encoded by the runtime encoder, its forward time added to ``forward_seconds``; None
        on PyTorch."""
        encoder = self.runtime_encoder()
        if encoder is None:
            return None
        before = encoder.forward_seconds
        result = encoder.encode(items, progress)
        self.forward_seconds += encoder.forward_seconds - before
        return result

    def save_runtime(self, key: str, root: Path) -> bool:
        """Record in classifier folder ``root`` the graph this encoder runs on, so that the model loads
        without PyTorch (``runtime.load_runtime``); False when it runs on PyTorch."""
        encoder = self.runtime_encoder()
        if encoder is None:
            return False
        runtime.save_runtime(key, self._graph.graph_file, encoder, root)
        return True
