"""Decode one image file into uint8 pixels and fit it to a square: the one place images are converted."""

from __future__ import annotations

import contextlib
import io
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "WEBP"})
FITS = ("crop", "pad")
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class BadImage(Exception):
    """A file that cannot be used as an image; `reason` says why in a few words.

    `path` names the bad file when it is not the sample's own (the mask of an image + mask pair).
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


@contextlib.contextmanager
def _refuse_truncated() -> Iterator[None]:
    # Another library may have switched this global on; a cut-off file must fail here,
    # not decode with its missing rows filled in.
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/BMP/WebP bytes to uint8 (H, W, C), C=1 if every pixel is grey, else 3.

    Alpha is composited onto black (the pad colour); 16-bit grey is scaled to 8 bits; EXIF
    orientation is applied. Raises BadImage for anything unusable.
    """
    return decode_with(data, _pixels)


def decode_with(
    data: bytes, convert: Callable[[Image.Image], np.ndarray], formats: frozenset[str] = SUPPORTED_FORMATS, hint: str = ""
) -> np.ndarray:
    """Open image bytes of one of `formats`, apply EXIF orientation, and `convert` the image to an array.

    Every decoding failure becomes BadImage; `hint` is added to the reason for a format outside `formats`.
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with _refuse_truncated(), Image.open(io.BytesIO(data)) as img:
            if img.format not in formats:
                raise BadImage(f"unsupported image format {img.format}{hint}")
            img.load()
            return convert(ImageOps.exif_transpose(img))
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not a readable image (unknown format or garbage bytes)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too many pixels to decode safely ({e})") from None
    except (
        Exception
    ) as e:  # Pillow's decoders raise many types on malformed data (OSError, SyntaxError, struct.error, ...).
        raise BadImage(f"corrupt or truncated image data ({e})") from None


def _pixels(img: Image.Image) -> np.ndarray:
    if img.mode in SIXTEEN_BIT_MODES:
        # Pillow's own 16->8 bit conversion clips instead of scaling; v/257 maps 0..65535 onto 0..255.
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return np.round(wide / 257).astype(np.uint8)[..., None]
    # Every other mode (L, LA, 1, P, PA, RGB, RGBA, CMYK, YCbCr) goes through RGBA, which also
    # applies a palette's or PNG's transparency.
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
    # Composite onto black rather than dropping alpha: colours under transparent pixels are
    # arbitrary, and black matches the padding.
    rgb = ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., :1].copy()
    return rgb


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Turn uint8 (H, W, 1|3) into (H, W, channels): grey is repeated, colour becomes ITU-R 601 luma."""
    if pixels.shape[-1] == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=-1)
    return np.asarray(Image.fromarray(pixels).convert("L"))[..., None]


def fit_square(
    pixels: np.ndarray, resolution: int, fit: str, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> np.ndarray:
    """Resize uint8 (H, W, C) to (resolution, resolution, C).

    `crop` scales the short side to `resolution` and cuts the long side at the centre; `pad`
    scales the long side to `resolution` and centres the image on black (0). The geometry depends
    only on the size, so an image and its mask (resampled NEAREST) stay aligned.
    """
    h, w, c = pixels.shape
    if (h, w) == (resolution, resolution):
        return pixels
    scale = resolution / (min(h, w) if fit == "crop" else max(h, w))
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    img = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
    # Lanczos by default as in StyleGAN's dataset_tool; Pillow antialiases when shrinking.
    resized = np.asarray(img.resize((new_w, new_h), resample)).reshape(new_h, new_w, c)
    top, left = abs(resolution - new_h) // 2, abs(resolution - new_w) // 2
    if fit == "crop":
        return resized[top : top + resolution, left : left + resolution]
    square = np.zeros((resolution, resolution, c), np.uint8)
    square[top : top + new_h, left : left + new_w] = resized
    return square


def conform_image(
    pixels: np.ndarray, *, channels: int | None, resolution: int | None, fit: str = "crop"
) -> np.ndarray:
    """Bring uint8 (H, W, C) to the requested channels and square size; None keeps what it has."""
    if channels is not None:
        pixels = to_channels(pixels, channels)
    if resolution is not None:
        pixels = fit_square(pixels, resolution, fit)
    return pixels
