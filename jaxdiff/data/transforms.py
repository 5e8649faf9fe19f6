"""Host-side example transforms (numpy / scipy / scikit-image; they run in grain workers, never under jit).

An example is a dict {"image": (H, W, C) float32 in [-1, 1], "mask": (H, W, K) float32 in {0, 1}, ...} (K = 1,
or one channel per nested region with `data.regions`); other keys pass through unchanged. These are the
preprocessing of the original transformer-UNet BraTS segmenter (`clahe`, deterministic, every split) and its
augmentation (`augment(example, rng)`, the training split), chosen from a config `data` block by `from_config`.
All functions are module-level, so they pickle into grain worker processes.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.exposure import equalize_adapthist

from jaxdiff.errors import InputError

OPENCV_HIST_BINS = 256      # cv2.createCLAHE on uint8 images: one histogram bin per grey level


def skimage_clip_limit(opencv_clip: float, nbins: int = OPENCV_HIST_BINS) -> float:
    """skimage's normalised `clip_limit` equivalent to OpenCV's `clipLimit` (a multiple of the mean bin count).

    OpenCV (clahe.cpp) clips each tile histogram at `max(1, int(clipLimit * tile_pixels / 256))` counts;
    skimage (`exposure/_adapthist.py`) at `max(1, int(clip_limit * tile_pixels))` counts. The two are the same
    integer limit when `clip_limit = clipLimit / nbins` with nbins = 256: OpenCV 2.0 -> skimage 0.0078125.
    """
    return float(opencv_clip) / int(nbins)


def _clahe_channel(x: np.ndarray, clip_limit: float, tiles: int) -> np.ndarray:
    """(H, W) in [-1, 1] -> (H, W) in [-1, 1]: [0, 1] -> uint8 -> CLAHE (tiles x tiles) -> /255 -> [-1, 1]."""
    u8 = (np.clip((x + 1.0) * 0.5, 0.0, 1.0) * 255.0).astype(np.uint8)
    if u8.min() == u8.max():                 # skimage would map a flat slice to white; leave it as it is
        return x.astype(np.float32)
    h, w = u8.shape
    out = equalize_adapthist(u8, kernel_size=(max(h // tiles, 1), max(w // tiles, 1)),
                             clip_limit=skimage_clip_limit(clip_limit), nbins=OPENCV_HIST_BINS)
    return (np.round(out * 255.0) / 127.5 - 1.0).astype(np.float32)


def clahe(example: dict, clip_limit: float = 2.0, tiles: int = 8) -> dict:
    """Contrast-limited adaptive histogram equalisation of every image channel (the transformer-UNet BraTS
    segmenter's preprocessing).

    Per channel: [-1, 1] -> [0, 1] -> uint8 (`(x * 255).astype(uint8)`) -> `skimage.exposure.equalize_adapthist`
    with (H // tiles, W // tiles) tiles and OpenCV's `clip_limit` converted by `skimage_clip_limit` -> rounded
    to 256 levels (the original kept CLAHE's uint8 output and divided by 255) -> [-1, 1]. A constant channel is
    returned unchanged. Differences from `cv2.createCLAHE(2.0, (8, 8))` that remain: skimage stretches each
    slice's min..max over its histogram range before binning and its output over [0, 1] afterwards, pads the
    image by reflection rather than OpenCV's border padding, and redistributes clipped counts slightly
    differently; the clip count and tile size are the same.

    Args:
      example: {"image": (H, W, C) float32 in [-1, 1], ...}.
      clip_limit: OpenCV-style clip limit (multiple of the mean bin count).
      tiles: tiles per side (8 -> 8 x 8 tiles; 30 x 30 pixels on a 240 x 240 slice).
    Returns:
      A new dict with "image" equalised, (H, W, C) float32 in [-1, 1]; other keys unchanged.
    """
    image = np.asarray(example["image"], np.float32)
    out = np.stack([_clahe_channel(image[..., c], clip_limit, tiles) for c in range(image.shape[-1])], axis=-1)
    return {**example, "image": out}


def _elastic_coords(shape: tuple, rng: np.random.Generator, alpha: float, sigma: float) -> np.ndarray:
    """(2, H, W) sampling coordinates: the identity grid plus a Gaussian-smoothed uniform(-1, 1) displacement
    field times `alpha` (pixels), as albumentations' ElasticTransform (non-approximate path)."""
    grid = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")).astype(np.float32)
    shift = np.stack([ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, shape), sigma) * alpha for _ in range(2)])
    return grid + shift.astype(np.float32)


def _warp(array: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    """Resample each channel of (H, W, C) at `coords` (2, H, W); reflect-101 borders (scipy "mirror")."""
    return np.stack([ndimage.map_coordinates(array[..., c], coords, order=order, mode="mirror")
                     for c in range(array.shape[-1])], axis=-1).astype(array.dtype)


def _brightness_contrast(image: np.ndarray, rng: np.random.Generator, brightness: float,
                         contrast: float) -> np.ndarray:
    """albumentations RandomBrightnessContrast (brightness_by_max) in [-1, 1] space.

    On u = (x + 1) / 2 in [0, 1]: u' = clip(a * u + b, 0, 1) with a = 1 + U(-contrast, contrast) and
    b = U(-brightness, brightness); returned as 2 u' - 1.
    """
    a = 1.0 + rng.uniform(-contrast, contrast)
    b = rng.uniform(-brightness, brightness)
    return np.clip(a * (image + 1.0) - 1.0 + 2.0 * b, -1.0, 1.0).astype(np.float32)


def augment(example: dict, rng: np.random.Generator, hflip: float = 0.5, vflip: float = 0.5, rot90: float = 0.5,
            brightness: float = 0.2, contrast: float = 0.2, elastic: float = 0.1, brightness_contrast_p: float = 0.2,
            elastic_alpha: float = 1.0, elastic_sigma: float = 50.0) -> dict:
    """The transformer-UNet BraTS segmenter's augmentation (its albumentations pipeline), one random draw per
    call.

    In order, each with its own probability: horizontal flip (`hflip`), vertical flip (`vflip`), rotation by
    k * 90 degrees with k uniform in {0, 1, 2, 3} (`rot90`, as albumentations RandomRotate90, so the image
    actually turns with probability 0.75 * rot90), elastic deformation (`elastic`), then brightness/contrast
    (`brightness_contrast_p`, limits `brightness` and `contrast`, see `_brightness_contrast`; image only).
    Geometric steps act identically on "image" and "mask"; the elastic warp resamples the image bilinearly
    (order 1) and the mask by nearest neighbour (order 0), so the mask stays in {0, 1} and each of its K channels
    moves with the same displacement (nested region channels stay nested). `elastic_alpha` = 1 and
    `elastic_sigma` = 50 are albumentations' ElasticTransform defaults (1.x and 2.x; 1.x also applied a random
    affine, `alpha_affine=50`, which is not reproduced); they displace pixels by well under one pixel.
    `brightness_contrast_p` = 0.2 reads the original's "brightness/contrast 0.2" as that transform's probability,
    with albumentations' default limits of 0.2 (albumentations' own default probability is 0.5).

    Args:
      example: {"image": (H, W, C) float32 in [-1, 1], "mask": (H, W, K) {0, 1}, ...}.
      rng: the per-example generator (grain's `random_map` passes one derived from the dataset seed).
    Returns:
      A new dict, "image" (H, W, C) float32 in [-1, 1] and "mask" (H, W, K) in {0, 1} (same dtype as given);
      for non-square images the 90 / 270 degree rotations are skipped to keep the shape.
    """
    image, mask = np.asarray(example["image"], np.float32), np.asarray(example["mask"])
    if rng.random() < hflip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < vflip:
        image, mask = image[::-1], mask[::-1]
    if rng.random() < rot90:
        k = int(rng.integers(4)) if image.shape[0] == image.shape[1] else 2 * int(rng.integers(2))
        image, mask = np.rot90(image, k, axes=(0, 1)), np.rot90(mask, k, axes=(0, 1))
    if rng.random() < elastic:
        coords = _elastic_coords(image.shape[:2], rng, elastic_alpha, elastic_sigma)
        image, mask = _warp(image, coords, order=1), _warp(mask, coords, order=0)
    if rng.random() < brightness_contrast_p:
        image = _brightness_contrast(image, rng, brightness, contrast)
    return {**example, "image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask)}


def config_flag(data_config, key: str) -> bool:
    """The boolean `data.<key>` (default False); InputError naming the key for anything but a bool or 0 / 1."""
    value = data_config.get(key, False)
    if value not in (True, False):             # also accepts 0 / 1
        raise InputError(f"config key data.{key}: {value!r} is not a boolean")
    return bool(value)


def from_config(data_config) -> tuple:
    """(eval_transform, train_transform) from a config `data` block, each None when switched off.

    eval_transform (`example -> example`) is applied to every split: `clahe` when `data.clahe` is true.
    train_transform (`(example, rng) -> example`) is the training augmentation: `augment` when
    `data.augment` is true. Applying it to val/test as well (`data.faithful_augment_test`: the original
    augmented its test set too, a bug) is the source factory's business (`jaxdiff.data.pipeline.get_source`).
    """
    every_split = clahe if config_flag(data_config, "clahe") else None
    return every_split, (augment if config_flag(data_config, "augment") else None)
