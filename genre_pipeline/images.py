"""Image verification: whether some bytes are a poster the pipeline can use (fully decodes to RGB at
a usable size, within a pixel budget). Ingestion checks downloads with it; the model and the server
check the posters they are given."""

from __future__ import annotations

import dataclasses
import io

from PIL import Image, UnidentifiedImageError

MIN_WIDTH = 32
MIN_HEIGHT = 32
# TMDb's largest posters are about 2000x3000; PIL itself only warns below ~179 megapixels, and a
# 17 KB PNG can declare 144 of them (1.7 GB decoded). The size is read from the header, before decoding.
MAX_PIXELS = 40_000_000


class PosterError(ValueError):
    """The bytes are not a usable poster; ``kind`` is 'corrupt', 'too_small' or 'too_large'."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass
class VerifiedPoster:
    image: Image.Image  # RGB
    source_format: str | None
    source_mode: str

    @property
    def is_rgb_jpeg(self) -> bool:
        return self.source_format == "JPEG" and self.source_mode == "RGB"


class PosterBytes(bytes):
    """A poster file's bytes that ``verify_poster`` accepted, carrying the decoded image (``verified``):
    whoever checked a poster hands it on as these bytes, and the model reads the image without decoding
    the file again. Plain bytes anywhere else (MLflow's binary columns accept them)."""

    verified: VerifiedPoster

    @classmethod
    def of(cls, data: bytes) -> "PosterBytes":
        """``data`` verified (PosterError if it is no usable poster)."""
        poster = cls(data)
        poster.verified = verify_poster(data)
        return poster


def verify_poster(data: bytes, *, min_width: int = MIN_WIDTH, min_height: int = MIN_HEIGHT) -> VerifiedPoster:
    """Return the poster decoded to RGB, or raise PosterError.

    ``verify()`` checks the container without decoding, so a full ``load()`` follows:
    a truncated JPEG passes the first and fails the second.
    """
    if not data:
        raise PosterError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > MAX_PIXELS:
                raise PosterError(
                    f"image is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than the "
                    f"{MAX_PIXELS / 1e6:.0f} megapixels a poster may have",
                    "too_large",
                )
            probe.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            source_format, source_mode = image.format, image.mode
            rgb = image.convert("RGB")
    except PosterError:
        raise
    except Image.DecompressionBombError as error:  # beyond twice PIL's own limit: refused at open
        raise PosterError(f"image too large to decode: {error}", "too_large") from None
    except UnidentifiedImageError:
        raise PosterError("not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise PosterError(f"not a readable image: {error}") from None
    if rgb.width < min_width or rgb.height < min_height:
        raise PosterError(f"image is {rgb.width}x{rgb.height}, smaller than {min_width}x{min_height}", "too_small")
    return VerifiedPoster(rgb, source_format, source_mode)
