"""The ONNX Runtime backends against PyTorch fp32, on the small bundled MiniLM and EfficientNet-Lite0."""

import json
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from genre_pipeline import settings
from genre_pipeline.defs.resources import TrainingResource
from genre_pipeline.models.encoders import onnx_backend, runtime
from genre_pipeline.models.encoders.image import ImageEncoder
from genre_pipeline.models.encoders.text import TextEncoder

MINILM = "all-MiniLM-L6-v2"
TEXTS = [
    "A lonely robot falls in love with a probe sent to a dead Earth.",
    "Two brothers rob banks across West Texas to save the family ranch.",
    "Mist",
    "An epic about the fall of a dynasty, told by the last emperor's cook. " * 30,
]


@pytest.fixture(scope="module", autouse=True)
def private_encoder_cache(tmp_path_factory):
    """This module counts the graphs it exports: it gets an encoder cache of its own, not the persistent one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(settings.CACHE_DIR_ENV, str(tmp_path_factory.mktemp("encoder-cache")))
        yield


def exported_graphs() -> list:
    return sorted((settings.encoder_cache_dir() / "onnx").glob("text-*"))


@pytest.fixture(scope="module")
def reference():
    return TextEncoder(MINILM, backend="torch").encode(TEXTS)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_each_backend_gives_pytorchs_embeddings_within_the_guard(reference, backend):
    encoder = TextEncoder(MINILM, backend=backend)
    guard = onnx_backend.compare(reference, encoder.encode(TEXTS))
    assert encoder.backend == backend and guard.passed, guard.describe()
    if backend == "onnx":  # the same arithmetic in fp32
        assert guard.min_cosine > 0.9999
    else:  # int8 weights move the vectors, a little
        assert guard.min_cosine < 0.9999


def test_the_graph_is_exported_once_per_weights(reference):
    TextEncoder(MINILM, backend="onnx").encode(TEXTS[:1])
    before = exported_graphs()
    again = TextEncoder(MINILM, backend="onnx")
    again.encode(TEXTS[:1])
    assert exported_graphs() == before

    with torch.no_grad():  # what fine-tuning does to the weights
        again.model.embeddings.word_embeddings.weight.mul_(1.05)
    changed = TextEncoder(MINILM, backend="onnx")
    changed.model.load_state_dict(again.model.state_dict())
    embedded = changed.encode(TEXTS)
    assert len(exported_graphs()) == len(before) + 1
    changed_reference = TextEncoder(MINILM, backend="torch")
    changed_reference.model.load_state_dict(again.model.state_dict())
    assert onnx_backend.compare(changed_reference.encode(TEXTS), embedded).min_cosine > 0.9999
    assert onnx_backend.compare(reference, embedded).min_cosine < 0.9999


def test_a_graph_beyond_the_guard_is_not_used(reference, monkeypatch, caplog):
    # int8 MiniLM keeps a min cosine near 0.98 to fp32: a guard at 0.999 must refuse it.
    monkeypatch.setattr(onnx_backend, "GUARD_MIN_COSINE", 0.999)
    encoder = TextEncoder(MINILM, backend="onnx-int8")
    with caplog.at_level(logging.INFO):  # a warning when the graph was just exported, info on later loads
        embedded = encoder.encode(TEXTS)
    assert encoder.backend == "onnx"
    assert "not using onnx-int8" in caplog.text and "min 0.9" in caplog.text
    assert onnx_backend.compare(reference, embedded).min_cosine > 0.9999


def largest_int8_weight(graph_file) -> int:
    import onnx
    from onnx import numpy_helper

    weights = [t for t in onnx.load(str(graph_file)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    return max(int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max()) for t in weights)


def test_int8_weights_beyond_the_guard_are_quantized_again_in_7_bits(reference, tmp_path):
    # On x86 without VNNI, uint8 x int8 products are summed in saturating 16 bits: all-mpnet-base-v2's
    # 8-bit graph came out as noise there. This check stands for such a CPU: it refuses any graph whose
    # weights use the full 8-bit range, and measures the others' embeddings against PyTorch's.
    encoder = TextEncoder(MINILM, backend="onnx")
    cache_name, module, spec = encoder._export_spec()
    fp32_graph = onnx_backend.exported(cache_name, module, **spec)[0] / "onnx" / onnx_backend.GRAPH_FILE
    tokenizer = encoder.runtime_encoder().tokenizer_json

    def embeddings_guard(graph_file):
        graph = runtime.TextGraph(runtime.session(graph_file), tokenizer, encoder.max_length, encoder.dim, "onnx-int8")
        return onnx_backend.compare(reference, graph.encode(TEXTS))

    def saturating_cpu(graph_file):
        return onnx_backend.Guard(0.0, 0.0) if largest_int8_weight(graph_file) > 64 else embeddings_guard(graph_file)

    kept = tmp_path / "onnx-int8" / onnx_backend.GRAPH_FILE
    kept.parent.mkdir()
    guard = onnx_backend._quantize_within_guard(MINILM, fp32_graph, kept, saturating_cpu)
    assert guard.passed and largest_int8_weight(kept) <= 64, guard.describe()
    assert json.loads((kept.parent / onnx_backend.GUARD_FILE).read_text())["weight_bits"] == 7
    assert onnx_backend.read_guard(kept.parent) == guard
    assert sorted(p.name for p in kept.parent.iterdir()) == [onnx_backend.GUARD_FILE, onnx_backend.GRAPH_FILE]

    # A CPU that refuses the 7-bit graph as well keeps the 8-bit one and its failed guard: it is not used.
    guard = onnx_backend._quantize_within_guard(
        MINILM, fp32_graph, kept, lambda graph_file: onnx_backend.Guard(0.0, 0.0)
    )
    assert not guard.passed and largest_int8_weight(kept) > 64
    assert json.loads((kept.parent / onnx_backend.GUARD_FILE).read_text())["weight_bits"] == 8
    assert sorted(p.name for p in kept.parent.iterdir()) == [onnx_backend.GUARD_FILE, onnx_backend.GRAPH_FILE]


def test_the_guard_fails_on_drifted_embeddings(reference):
    noise = np.random.default_rng(0).normal(scale=0.03, size=reference.shape).astype(np.float32)
    assert onnx_backend.compare(reference, reference).passed
    drifted = onnx_backend.compare(reference, reference + noise)
    assert not drifted.passed and drifted.mean_cosine < onnx_backend.GUARD_MEAN_COSINE


def test_without_onnxruntime_the_encoder_runs_on_pytorch_and_says_so(reference, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    encoder = TextEncoder(MINILM, backend="onnx-int8")
    with caplog.at_level(logging.WARNING):
        embedded = encoder.encode(TEXTS)
    assert encoder.backend == "torch"
    assert "onnxruntime is not installed" in caplog.text and "PyTorch fp32" in caplog.text
    np.testing.assert_allclose(embedded, reference, atol=1e-5)


def test_cuda_keeps_pytorch():
    module = torch.nn.Linear(4, 4)
    assert onnx_backend.fastest_available("linear", module, "onnx-int8", torch.device("cuda")) is None


def test_posters_on_onnx_match_pytorch(tmp_path):
    rng = np.random.default_rng(1)
    posters = []
    for n in range(3):
        path = tmp_path / f"poster-{n}.png"
        Image.fromarray(rng.integers(0, 256, (90, 60, 3), dtype=np.uint8)).resize((300, 450)).save(path)
        posters.append(path)
    reference = ImageEncoder(backend="torch").encode(posters)
    for backend in ("onnx", "onnx-int8"):
        encoder = ImageEncoder(backend=backend)
        assert onnx_backend.compare(reference, encoder.encode(posters)).min_cosine > 0.9999
        # EfficientNet is convolutions: the int8 recipe leaves it fp32, and says so.
        assert encoder.backend == "onnx"


def test_backends_are_checked_where_they_are_configured(monkeypatch):
    with pytest.raises(ValueError, match="unknown encoder backend 'fast'.*torch, onnx, onnx-int8"):
        TextEncoder(MINILM, backend="fast")
    with pytest.raises(Exception, match="unknown encoder backend"):
        TrainingResource(encoder_backend="fast")
    assert onnx_backend.configured_backend("torch") == "torch"
    monkeypatch.setenv(settings.ENCODER_BACKEND_ENV, "onnx")
    assert onnx_backend.configured_backend("torch") == "onnx"
    monkeypatch.setenv(settings.ENCODER_BACKEND_ENV, "int4")
    with pytest.raises(ValueError, match="int4"):
        onnx_backend.configured_backend("torch")
