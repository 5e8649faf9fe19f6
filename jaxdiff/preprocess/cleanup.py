"""Near-white background / frame cleanup and per-channel intensity CDFs.

Some Kaggle yes/no scans sit on a white background or inside a light frame; Otsu then takes the background
for the brain. `clean_background` finds near-white pixels (every channel >= `level`), keeps the near-white
regions that touch the image border (a background or frame always does; bright tissue inside the head does
not, so it is kept), dilates them with a 3x3 square (to catch the JPEG fringe) and sets them to black.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

WHITE_LEVEL = 0.92          # near-white: every channel >= 0.92 (235 of 255)
PERCENTILES = (5, 25, 50, 75, 95)


def near_white_mask(image: np.ndarray, level: float = WHITE_LEVEL, border_only: bool = True) -> np.ndarray:
    """(H, W, C) float in [0, 1] -> (H, W) bool: near-white pixels (all channels >= level); with
    `border_only`, only the 8-connected near-white regions touching the image border."""
    white = np.all(image >= level, axis=-1)
    if not border_only or not white.any():
        return white
    labels, _ = ndimage.label(white, structure=np.ones((3, 3)))
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def clean_background(image: np.ndarray, level: float = WHITE_LEVEL, dilation: int = 3,
                     border_only: bool = True) -> tuple[np.ndarray, int]:
    """Set the near-white background / frame of an image to black.

    Args:
      image: (H, W, C) float in [0, 1].
      level: near-white threshold per channel.
      dilation: side of the square structuring element the mask is dilated with (1: no dilation).
      border_only: clean only near-white regions connected to the image border (see module docstring).
    Returns:
      (cleaned image (H, W, C) float32, number of pixels set to black).
    """
    mask = near_white_mask(image, level, border_only)
    if dilation > 1 and mask.any():
        mask = ndimage.binary_dilation(mask, structure=np.ones((dilation, dilation), bool))
    out = np.array(image, np.float32, copy=True)
    out[mask] = 0.0
    return out, int(mask.sum())


def channel_cdfs(image: np.ndarray, bins: int = 256) -> np.ndarray:
    """Per-channel cumulative distribution of intensities: (H, W, C) in [0, 1] -> (bins, C) float32, where
    row b is the fraction of pixels with intensity < (b + 1) / bins (the last row is 1)."""
    c = image.shape[-1]
    hists = [np.histogram(image[..., i], bins=bins, range=(0.0, 1.0))[0] for i in range(c)]
    counts = np.cumsum(np.stack(hists, axis=-1), axis=0).astype(np.float64)
    return (counts / max(counts[-1].max(), 1)).astype(np.float32)


def channel_percentiles(image: np.ndarray, q=PERCENTILES) -> np.ndarray:
    """Intensity at the given CDF percentiles per channel: (H, W, C) -> (len(q), C) float32 in [0, 1]."""
    return np.percentile(image.reshape(-1, image.shape[-1]), q, axis=0).astype(np.float32)
