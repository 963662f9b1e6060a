"""Weights shipped as a split zip across packages: joined, unpacked once, and checked by sha256."""

import hashlib
import io
import zipfile

import pytest

from genre_pipeline.models.encoders import DEFAULT_TEXT_ENCODER, EncoderUnavailable, bundled_weights
from genre_pipeline.models.encoders.bundled_weights import BundledWeightsError, unpack_split_zip
from genre_pipeline.models.encoders.onnx_backend import DEFAULT_BACKEND, compare
from genre_pipeline.models.encoders.text import GUARD_TEXTS, TextEncoder, resolve_text_encoder

WEIGHTS = bytes(range(256)) * 400


def split_zip(tmp_path, weights: bytes = WEIGHTS, n_parts: int = 3) -> list:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model-folder/model.safetensors", weights)
        archive.writestr("model-folder/config.json", '{"hidden_size": 8}')
        archive.writestr("model-folder/desktop.ini", "")
    data = buffer.getvalue()
    size = -(-len(data) // n_parts)
    parts = []
    for n in range(n_parts):
        part = tmp_path / f"model.zip.{n + 1:03d}"
        part.write_bytes(data[n * size : (n + 1) * size])
        parts.append(part)
    return parts


def test_parts_are_joined_unpacked_and_verified_once(tmp_path):
    parts = split_zip(tmp_path)
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    folder = unpack_split_zip(parts, tmp_path / "encoders", "model-folder", sha)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "config.json").is_file()
    parts[0].unlink()  # a second call reuses the verified folder
    assert unpack_split_zip(parts, tmp_path / "encoders", "model-folder", sha) == folder


def test_weights_with_another_checksum_are_refused_and_not_kept(tmp_path):
    parts = split_zip(tmp_path)
    with pytest.raises(BundledWeightsError, match="has sha256"):
        unpack_split_zip(parts, tmp_path / "encoders", "model-folder", "0" * 64)
    assert list((tmp_path / "encoders").iterdir()) == []


def test_a_missing_part_is_a_clear_error(tmp_path):
    parts = split_zip(tmp_path)
    with pytest.raises(BundledWeightsError, match="do not join into a valid zip"):
        unpack_split_zip(parts[:-1], tmp_path / "encoders", "model-folder", hashlib.sha256(WEIGHTS).hexdigest())


def test_mpnet_without_its_packages_names_the_install_command(monkeypatch):
    monkeypatch.setattr(bundled_weights, "MPNET_PACKAGES", ("not-an-installed-package-001",))
    with pytest.raises(EncoderUnavailable, match="make setup"):
        resolve_text_encoder("all-mpnet-base-v2")


def test_the_default_text_encoder_loads_from_its_packages_and_embeds_within_the_guard(caplog):
    """all-mpnet-base-v2 from its five PyPI parts (joined, unzipped, sha256 checked into the encoder
    cache), on the default backend, against PyTorch fp32 on the accuracy guard's own sample. On a CPU
    whose int8 kernels drift past the guard (seen on an AVX2 machine without VNNI: cosine ~0), the
    encoder must have said so, with the figures, and run on the next backend."""
    caplog.set_level("INFO", logger="genre_pipeline.models.encoders.onnx_backend")
    encoder = TextEncoder(DEFAULT_TEXT_ENCODER)
    embedded = encoder.encode(list(GUARD_TEXTS))
    assert embedded.shape == (len(GUARD_TEXTS), 768)
    if encoder.backend != DEFAULT_BACKEND:
        assert f"not using {DEFAULT_BACKEND}" in caplog.text and "cosine to PyTorch fp32" in caplog.text
    guard = compare(TextEncoder(DEFAULT_TEXT_ENCODER, backend="torch").encode(list(GUARD_TEXTS)), embedded)
    assert guard.passed, guard.describe()
