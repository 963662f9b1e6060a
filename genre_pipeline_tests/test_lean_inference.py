"""Inference without PyTorch gives what the PyTorch parts give: the poster transform, the tokenizer,
the heads, and the one-vs-rest models folded into one matrix product."""

import io

import numpy as np
import pytest
import scipy.sparse
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from transformers import AutoTokenizer

from genre_pipeline.models.encoders import runtime
from genre_pipeline.models.encoders.image import image_transform, read_image
from genre_pipeline.models.encoders.text import GUARD_TEXTS, resolve_text_encoder
from genre_pipeline.models.head_forward import head_probabilities
from genre_pipeline.models.heads import HEAD_KINDS, build_head
from genre_pipeline.models.members import _OneVsRestLogistic


def _image_bytes(rng, height: int, width: int, mode: str) -> bytes:
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "height, width, mode",
    [(750, 500, "RGB"), (224, 224, "RGB"), (100, 61, "RGB"), (1203, 77, "L"), (300, 450, "RGBA"), (17, 900, "P")],
)
def test_the_poster_transform_in_numpy_is_torchvisions_bit_for_bit(height, width, mode):
    data = _image_bytes(np.random.default_rng(height * width), height, width, mode)
    expected = read_image(data, image_transform()).numpy()
    np.testing.assert_array_equal(runtime.poster_array(data), expected)


def test_the_tokenizer_gives_transformers_ids_and_counts():
    directory = resolve_text_encoder("all-MiniLM-L6-v2")
    reference = AutoTokenizer.from_pretrained(directory)
    graph = runtime.TextGraph(None, reference.backend_tokenizer.to_str(), max_length=64, dim=384, backend="onnx")
    texts = [*GUARD_TEXTS, "naïve café: ÀÉÎ 😀 — “quoted”", "tab\tand\nnew line", "x"]
    for text in texts:
        expected = reference([text], truncation=True, max_length=64, return_tensors="np")
        inputs = graph.inputs(text)
        np.testing.assert_array_equal(inputs["input_ids"], expected["input_ids"])
        np.testing.assert_array_equal(inputs["attention_mask"], expected["attention_mask"])
    expected_counts = [len(ids) for ids in reference(texts, truncation=False, verbose=False)["input_ids"]]
    assert graph.token_counts(texts) == expected_counts
    assert max(expected_counts) > 64  # the long guard text: counting is not truncated


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_heads_in_numpy_give_pytorchs_probabilities(kind):
    torch.manual_seed(0)
    dims = {"n_labels": 12, "text_dim": 32, "image_dim": 16}
    head = build_head(kind, **dims).eval()
    rng = np.random.default_rng(0)
    width = {"text": 32, "image": 16}.get(kind, 32 + 16 + 1)
    features = rng.standard_normal((40, width)).astype(np.float32)
    if kind.endswith("fusion"):
        features[:, -1] = rng.integers(0, 2, 40)  # has_poster
    with torch.inference_mode():
        expected = torch.sigmoid(head(torch.from_numpy(features))).numpy()
    weights = {k: v.numpy() for k, v in head.state_dict().items()}
    np.testing.assert_allclose(head_probabilities(kind, weights, features, dims), expected, atol=1e-6)


def test_one_vs_rest_as_one_matrix_product_gives_predict_proba():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 20))
    labels = (x[:, :5] + rng.standard_normal((200, 5)) > 0.5).astype(int)
    model = OneVsRestClassifier(LogisticRegression(max_iter=500)).fit(x, labels)
    folded = _OneVsRestLogistic(model)
    assert folded.folded
    np.testing.assert_allclose(folded.probabilities(x), model.predict_proba(x), atol=1e-7)
    sparse = scipy.sparse.csr_matrix(np.where(np.abs(x) > 1, x, 0))
    np.testing.assert_allclose(folded.probabilities(sparse), model.predict_proba(sparse), atol=1e-7)

    labels[:, 2] = 1  # a genre every training movie has: scikit-learn fits a constant predictor for it
    constant = OneVsRestClassifier(LogisticRegression(max_iter=500)).fit(x, labels)
    kept = _OneVsRestLogistic(constant)
    assert not kept.folded
    np.testing.assert_allclose(kept.probabilities(x), constant.predict_proba(x), atol=1e-7)
