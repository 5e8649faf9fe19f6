"""Random-access data sources (grain-compatible: `__len__`, `__getitem__(i) -> dict of numpy arrays`).

Helpers shared by the volume sources live here: case-level splits, per-volume intensity normalisation and
the extraction of resized axial slices.

Slice orientation (every slice source): volumes are RAS arrays (X, Y, Z); the axial slice k is
`rot90(volume[:, :, k])`, an (Y, X) image with anterior at the top and the patient's left on the left of the
image (neurological convention).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from jaxdiff.errors import InputError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
NORMALISATIONS = ("volume_max", "zscore")


class Region(NamedTuple):
    """One region of a nested region set: its `name`, the seg `labels` it unites, and the `label` written back
    where it is the innermost region predicted (`jaxdiff.inference.labels_from_probabilities`)."""
    name: str
    labels: tuple
    label: int


# `data.regions`: the mask channels, outermost first; each region lies inside the one before it (nnU-Net's
# region-based BraTS training: WT = {1, 2, 4}, TC = {1, 4}, ET = {4}; BraTS 2023 labels enhancing tumour 3).
REGION_SETS = {
    "brats": (Region("WT", (1, 2, 4), 2), Region("TC", (1, 4), 1), Region("ET", (4,), 4)),
    "brats2023": (Region("WT", (1, 2, 3), 2), Region("TC", (1, 3), 1), Region("ET", (3,), 3)),
}


def region_set(regions) -> tuple | None:
    """`data.regions` -> its tuple of `Region`s (the mask channels, in order), or None for one whole-tumour
    channel (seg > 0); InputError naming the key for anything else."""
    if regions is None or regions == "" or (isinstance(regions, str) and regions.lower() == "none"):
        return None
    if not isinstance(regions, str) or regions.lower() not in REGION_SETS:
        raise InputError(f"config key data.regions: {regions!r} is not None or one of {', '.join(REGION_SETS)}")
    return REGION_SETS[regions.lower()]


def mask_channels(data_config) -> int:
    """Mask channels K of a config `data` block: the number of regions of `data.regions`, else 1."""
    regions = region_set(data_config.get("regions", None))
    return 1 if regions is None else len(regions)


def split_cases(cases: Sequence, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict:
    """Deterministic case-level split into train/val/test.

    Args:
      cases: case identifiers (names or indices).
      seed: permutation seed.
      fractions: (train, val, test) fractions; val and test each get at least one case when they have a
        non-zero fraction and there are at least three cases.
    Returns:
      {"train": [...], "val": [...], "test": [...]}, disjoint, each in the input order.
    """
    cases = list(cases)
    n = len(cases)
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise InputError(f"split fractions {tuple(fractions)}: expected three non-negative numbers")
    fr = fr / fr.sum()
    sizes = [int(round(f * n)) if n < 3 or f == 0 else max(1, int(round(f * n))) for f in fr[1:]]
    n_val, n_test = sizes[0], min(sizes[1], n - sizes[0])
    order = np.random.default_rng(seed).permutation(n)
    parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    return {name: [cases[i] for i in sorted(parts[name])] for name in SPLITS}


def excluded_cases(data_config) -> tuple:
    """`data.exclude_cases` as a tuple of case names: the cases every file source leaves out of its splits
    (set by `jaxdiff.data.check.check_data` with `data.skip_bad_cases`; see each source for its case names)."""
    names = data_config.get("exclude_cases", None) or ()
    return (names,) if isinstance(names, str) else tuple(str(n) for n in names)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise InputError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return split


def parse_modalities(modality, allowed: Sequence[str], key: str = "data.modality") -> tuple:
    """"t2", "t1,t2" or ("t1", "t2") -> a tuple of names from `allowed` (one output channel each)."""
    names = modality.split(",") if isinstance(modality, str) else list(modality)
    names = tuple(str(m).strip().lower() for m in names if str(m).strip())
    bad = [m for m in names if m not in allowed]
    if not names or bad:
        raise InputError(f"config key {key}: {modality!r} is not one or more of {', '.join(allowed)}")
    return names


def normalise(volume: np.ndarray, method: str = "volume_max") -> np.ndarray:
    """Map a volume to [-1, 1] float32.

    "volume_max": v / max(v) (the transformer-UNet BraTS segmenter's recipe), then 2x - 1; assumes non-negative
    MR intensities.
    "zscore": (v - mean) / std over non-zero (brain) voxels, clipped to +-3 std, divided by 3.
    """
    v = np.asarray(volume, dtype=np.float32)
    if method == "volume_max":
        top = float(v.max()) if v.size else 0.0
        return (2.0 * np.clip(v / top, 0.0, 1.0) - 1.0 if top > 0 else np.full_like(v, -1.0)).astype(np.float32)
    if method == "zscore":
        brain = v[v != 0]
        mean, std = (float(brain.mean()), float(brain.std())) if brain.size else (0.0, 0.0)
        return (np.clip((v - mean) / max(std, 1e-6), -3.0, 3.0) / 3.0).astype(np.float32)
    raise InputError(f"config key data.normalise: {method!r} is not one of {', '.join(NORMALISATIONS)}")


def _resize_stack(stack: np.ndarray, size: int, pad_value: float, order: int) -> np.ndarray:
    """(N, H, W) -> (N, size, size): pad to a centred square with `pad_value`, then zoom (antialiased)."""
    n, h, w = stack.shape
    side = max(h, w)
    pads = ((0, 0), ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2))
    stack = np.pad(stack, pads, constant_values=pad_value)
    if side == size:
        return stack
    factor = size / side
    if factor < 1 and order > 0:
        stack = ndimage.gaussian_filter(stack, (0, 0.5 / factor - 0.5, 0.5 / factor - 0.5))
    return ndimage.zoom(stack, (1, factor, factor), order=order, mode="nearest", grid_mode=True)


def region_masks(seg: np.ndarray, regions=None) -> np.ndarray:
    """(..., K) float32 {0, 1} masks of a label array `seg` (...): K = 1 whole tumour (seg > 0) when `regions`
    is None, else one channel per region of `region_set(regions)` (seg in the region's labels)."""
    seg = np.asarray(seg)
    regions = region_set(regions)
    if regions is None:
        return (seg > 0).astype(np.float32)[..., None]
    return np.stack([np.isin(seg, r.labels) for r in regions], axis=-1).astype(np.float32)


def axial_slices(volumes: Sequence[np.ndarray], mask: np.ndarray, slices: Sequence[int], image_size: int,
                 regions=None):
    """Resized axial slices of co-registered RAS volumes and a mask.

    Args:
      volumes: C arrays (X, Y, Z), already normalised to [-1, 1].
      mask: (X, Y, Z) array: non-zero inside the structure (e.g. a BraTS seg: whole tumour = seg > 0), or the
        label map from which `regions` takes its channels.
      slices: axial indices k along Z.
      image_size: output side S in pixels (the slice is padded to a square, then zoomed).
      regions: `data.regions` (None: one whole-tumour channel; "brats": WT, TC, ET, see `REGION_SETS`).
    Returns:
      images (N, S, S, C) float32 in [-1, 1]; masks (N, S, S, K) float32 in {0, 1}, K = 1 or the number of
      regions. Each mask channel is zoomed like an image (order 1, antialiased) and thresholded at 0.5; the
      interpolation weights are non-negative, so nested regions stay nested, and each region channel is also
      clipped to the one before it (its enclosing region) so that ET <= TC <= WT holds exactly.
    """
    ks = list(slices)
    channels = []
    for v in volumes:
        stack = np.rot90(v[:, :, ks], axes=(0, 1)).transpose(2, 0, 1)
        channels.append(np.clip(_resize_stack(stack, image_size, float(v.min()), order=1), -1.0, 1.0))
    m = region_masks(np.rot90(mask[:, :, ks], axes=(0, 1)).transpose(2, 0, 1), regions)
    m = np.stack([(_resize_stack(m[..., r], image_size, 0.0, order=1) > 0.5) for r in range(m.shape[-1])], axis=-1)
    m = np.minimum.accumulate(m, axis=-1) if regions is not None else m
    return np.stack(channels, axis=-1).astype(np.float32), m.astype(np.float32)
