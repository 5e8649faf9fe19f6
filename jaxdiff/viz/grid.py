"""Image grids written as PNG."""
from __future__ import annotations

import numpy as np
from PIL import Image

from jaxdiff.io import files


def to_uint8(images, value_range=(-1.0, 1.0)) -> np.ndarray:
    """Map float images in `value_range` to uint8, clipping outside values."""
    lo, hi = value_range
    x = (np.asarray(images, np.float32) - lo) / (hi - lo)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_grid(images, ncol: int | None = None, pad: int = 2, value_range=(-1.0, 1.0)) -> np.ndarray:
    """Tile (N, H, W, C) images (C = 1 or 3) into one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8 array."""
    images = to_uint8(images, value_range)
    n, h, w, c = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = images[i]
    return grid


def save_grid(images, path: str, ncol: int | None = None, value_range=(-1.0, 1.0), scale: int = 1) -> str:
    """Write a grid of (N, H, W, C) images to `path` (PNG), upscaled by `scale` (nearest). Returns the path."""
    grid = make_grid(images, ncol=ncol, value_range=value_range)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with files.open_write(path) as f:
        img.save(f, format="PNG")
    return str(path)
