"""Crop a scan to the brain: threshold, largest connected component, padded bounding box.

Thresholds (scikit-image), on the channel-mean grey image after a Gaussian blur of `blur` pixels:
- "otsu": one global threshold (`skimage.filters.threshold_otsu`), for evenly lit scans (most of them).
- "adaptive": a local Gaussian-weighted threshold (`skimage.filters.threshold_local`, block about a quarter
  of the image side, plus a margin of 2% of the intensity range so flat or ramped background stays out),
  then a closing, hole filling and a small opening; for unevenly lit scans ("soft cropping").
- "auto": Otsu, unless the lighting looks uneven or Otsu fails, i.e. any of: the mean intensities of the four
  corner patches (side / 8) differ by more than `UNEVEN_CORNERS` of the intensity range (a dark
  background should be even); Otsu's separability eta = between-class variance / total variance is below
  `MIN_SEPARABILITY` (not clearly two-toned); Otsu's largest component covers more than `MAX_COVER` of
  the image (the background was taken for the brain). Then adaptive.
The largest 8-connected component of the mask (`skimage.measure.label` + `regionprops`) is taken as the
head; its bounding box grows by `pad` times the longer image side on each side, clipped to the image.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage
from skimage import filters, measure, morphology

METHODS = ("auto", "otsu", "adaptive")
MIN_SEPARABILITY = 0.7
MAX_COVER = 0.95
UNEVEN_CORNERS = 0.15
ADAPTIVE_MARGIN = 0.02      # a pixel is foreground when above its local mean by 2% of the intensity range


class Crop(NamedTuple):
    """A crop: the cropped image (h, w, C), its box (row0, col0, row1, col1) in the input (end exclusive),
    the threshold method used ("otsu", "adaptive", or "none" for a blank image kept whole) and Otsu's
    separability eta in [0, 1]."""
    image: np.ndarray
    box: tuple
    method: str
    separability: float


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W) float32 channel mean."""
    a = np.asarray(image, np.float32)
    return a.mean(axis=-1) if a.ndim == 3 else a


def otsu_mask(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """Global Otsu mask of a (H, W) image and its separability eta = sigma_between^2 / sigma_total^2."""
    t = filters.threshold_otsu(grey)
    mask = grey > t
    w1 = mask.mean()
    if w1 in (0.0, 1.0):
        return mask, 0.0
    between = w1 * (1 - w1) * (grey[mask].mean() - grey[~mask].mean()) ** 2
    return mask, float(between / max(grey.var(), 1e-12))


def adaptive_mask(grey: np.ndarray, block_fraction: float = 0.25) -> np.ndarray:
    """Local-threshold mask of a (H, W) image: above the Gaussian-weighted local mean (block side ~
    `block_fraction` of the shorter side, odd) by `ADAPTIVE_MARGIN` of the intensity range, closed
    with a disk of radius ~ 2% of that side (bridges dark fissures such as the midline), holes filled and
    speckle removed by a radius-1 opening."""
    side = min(grey.shape)
    block = max(3, int(block_fraction * side) | 1)
    mask = grey > filters.threshold_local(grey, block, method="gaussian", offset=-ADAPTIVE_MARGIN * float(np.ptp(grey)))
    mask = ndimage.binary_closing(mask, structure=morphology.disk(max(1, side // 50)).astype(bool), border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    return ndimage.binary_opening(mask, structure=morphology.disk(1).astype(bool))


def largest_component(mask: np.ndarray):
    """The regionprops of the largest 8-connected component of a (H, W) bool mask, or None if empty."""
    regions = measure.regionprops(measure.label(mask, connectivity=2))
    return max(regions, key=lambda r: r.area) if regions else None


def padded_box(bbox, shape, pad: float) -> tuple:
    """(row0, col0, row1, col1) grown by round(pad * max(shape)) pixels per side, clipped to `shape`."""
    p = int(round(pad * max(shape)))
    r0, c0, r1, c1 = bbox
    return max(r0 - p, 0), max(c0 - p, 0), min(r1 + p, shape[0]), min(c1 + p, shape[1])


def corner_spread(grey: np.ndarray) -> float:
    """(max - min) of the four corner patches' mean intensities (patch side = image side / 8), divided by the
    image's intensity range: about 0 for an evenly dark background."""
    h, w = max(1, grey.shape[0] // 8), max(1, grey.shape[1] // 8)
    means = [grey[:h, :w].mean(), grey[:h, -w:].mean(), grey[-h:, :w].mean(), grey[-h:, -w:].mean()]
    return float((max(means) - min(means)) / max(float(np.ptp(grey)), 1e-12))


def choose_method(grey: np.ndarray, otsu: np.ndarray, separability: float) -> str:
    """The "auto" rule of the module docstring, from the (H, W) image, its Otsu mask and separability."""
    region = largest_component(otsu)
    cover = region.area / otsu.size if region is not None else 0.0
    even = corner_spread(grey) <= UNEVEN_CORNERS
    return "otsu" if even and separability >= MIN_SEPARABILITY and 0 < cover <= MAX_COVER else "adaptive"


def crop_to_brain(image: np.ndarray, method: str = "auto", pad: float = 0.02, blur: float = 1.0) -> Crop:
    """Crop (H, W, C) float in [0, 1] to the padded box of its largest thresholded component.

    Args:
      image: the scan (background already cleaned, see `cleanup.clean_background`).
      method: "auto", "otsu" or "adaptive" (module docstring).
      pad: box padding per side as a fraction of the longer image side.
      blur: Gaussian sigma in pixels applied before thresholding (0: none; less blur keeps edges).
    Returns:
      `Crop`; a constant image is kept whole with method "none".
    """
    if method not in METHODS:
        raise ValueError(f"crop method {method!r}: expected one of {', '.join(METHODS)}")
    grey = to_grey(image)
    shape = grey.shape
    if float(grey.max()) <= float(grey.min()):
        return Crop(np.asarray(image, np.float32), (0, 0) + shape, "none", 0.0)
    smooth = filters.gaussian(grey, sigma=blur) if blur > 0 else grey
    otsu, eta = otsu_mask(smooth)
    if method == "auto":
        method = choose_method(smooth, otsu, eta)
    mask = otsu if method == "otsu" else adaptive_mask(smooth)
    region = largest_component(mask)
    if region is None:
        return Crop(np.asarray(image, np.float32), (0, 0) + shape, "none", eta)
    r0, c0, r1, c1 = padded_box(region.bbox, shape, pad)
    return Crop(np.asarray(image[r0:r1, c0:c1], np.float32), (r0, c0, r1, c1), method, eta)
