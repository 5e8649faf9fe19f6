"""Decoding image files (JPEG, PNG, BMP, TIFF, ...) with Pillow into float arrays.

Every decoding failure (not an image, truncated or corrupt data) raises `InputError` naming the file, so a
batch can report the file in one line and go on.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from jaxdiff.errors import InputError

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _to_unit(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> (H, W) or (H, W, 3) float32 in [0, 1] (grey modes stay single-channel)."""
    if img.mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), np.float32) / 255.0
    if img.mode in GREY_MODES:                     # 16-bit or float grey: scale by the image maximum
        a = np.asarray(img, np.float32)
        top = float(a.max()) if a.size else 0.0
        return np.clip(a / top, 0.0, 1.0) if top > 0 else np.zeros_like(a)
    return np.asarray(img.convert("RGB"), np.float32) / 255.0


def read_image(path: str, channels: int | None = None) -> np.ndarray:
    """Decode an image file to (H, W, C) float32 in [0, 1].

    Args:
      path: the file.
      channels: None keeps the file's own channels (C = 1 for grey modes, else 3 after RGB conversion);
        1 converts to grey (channel mean); 3 converts grey to RGB by repeating it.
    Raises:
      InputError naming the file when it is not a decodable image (unknown format, truncated, corrupt).
    """
    try:
        with Image.open(path) as img:
            img.load()
            a = _to_unit(img)
    except _DECODE_ERRORS as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: not a readable image ({reason})") from None
    a = a[..., None] if a.ndim == 2 else a
    if channels == 1 and a.shape[-1] == 3:
        a = a.mean(axis=-1, keepdims=True)
    elif channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif channels not in (None, 1, 3):
        raise InputError(f"channels {channels}: expected 1 or 3")
    return np.ascontiguousarray(a, dtype=np.float32)


def write_png(path: str, image) -> str:
    """Write (H, W), (H, W, 1) or (H, W, 3) float in [0, 1] or uint8 as PNG (parents created). Returns path."""
    from jaxdiff.io import files
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
    with files.open_write(path) as f:
        Image.fromarray(a).save(f, format="PNG")
    return str(path)
