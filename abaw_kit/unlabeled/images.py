"""What ingest checks in an image's bytes: is it an image, its size, does it decode; its hash."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from abaw_kit.unlabeled.sources import Skip

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
# PIL names of the formats behind those extensions (MPO: JPEGs from phones with extra frames).
IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"})
HASH_BYTES = 16
# PIL refuses images above ~179M pixels and ingest those above 89.5M (its bomb warning): as RGB
# that is 256 MiB. No file ingest accepts is larger, so a bigger size claim is damage, and
# reading it would only run out of memory.
MAX_IMAGE_BYTES = 256 << 20

EMPTY = "empty file"
NOT_AN_IMAGE = "not an image"
UNSUPPORTED = "unsupported image format"
CORRUPT = "corrupt image"
TOO_LARGE = "image too large"
NOT_A_FILE = "not a regular file"


def content_hash(data: bytes) -> bytes:
    """The 16-byte blake2b digest ingest deduplicates on (fast, and collision-free in practice)."""
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot != -1 and name[dot:].lower() in IMAGE_EXTENSIONS


def open_image(data: bytes, *, decode: bool) -> Image.Image:
    """Parse the header (cheap) and, with ``decode``, the pixels; raise Skip with the reason."""
    if not data:
        raise Skip(EMPTY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in IMAGE_FORMATS:
                raise Skip(UNSUPPORTED, str(image.format))
            if decode:
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Skip(TOO_LARGE, str(exc)) from None
    except UnidentifiedImageError:
        raise Skip(NOT_AN_IMAGE) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise Skip(CORRUPT, str(exc)) from None
    return image


def to_rgb_array(data: bytes, size: int | None = None) -> np.ndarray:
    """Decode to uint8 RGB; with ``size``, a size x size image (JPEG draft mode when far larger).

    Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale, which is several times faster than
    decoding a large photo and shrinking it afterwards.
    """
    return np.array(to_rgb_image(data, size), dtype=np.uint8)


def to_rgb_image(data: bytes, size: int | None = None) -> Image.Image:
    """``to_rgb_array`` as a PIL image (for PIL work that follows: no array round trip)."""
    with Image.open(io.BytesIO(data)) as image:
        if size is not None and image.format == "JPEG" and min(image.size) >= 2 * size:
            image.draft("RGB", (size, size))
        rgb = image.convert("RGB")
        if size is not None and rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return rgb
