"""Random-access data sources (grain-compatible: `__len__`, `__getitem__(i) -> dict of numpy arrays`).

Helpers shared by the volume sources live here: case-level splits, per-volume intensity normalisation and
the extraction of resized axial slices.

Slice orientation (every slice source): volumes are RAS arrays (X, Y, Z); the axial slice k is
`rot90(volume[:, :, k])`, an (Y, X) image with anterior at the top and the patient's left on the left of the
image (neurological convention).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxdiff.errors import InputError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
NORMALISATIONS = ("volume_max", "zscore")


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

    "volume_max": v / max(v) (the seed S0 recipe), then 2x - 1; assumes non-negative MR intensities.
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


def axial_slices(volumes: Sequence[np.ndarray], mask: np.ndarray, slices: Sequence[int], image_size: int):
    """Resized axial slices of co-registered RAS volumes and a mask.

    Args:
      volumes: C arrays (X, Y, Z), already normalised to [-1, 1].
      mask: (X, Y, Z) array, non-zero inside the structure (e.g. a BraTS seg: whole tumour = seg > 0).
      slices: axial indices k along Z.
      image_size: output side S in pixels (the slice is padded to a square, then zoomed).
    Returns:
      images (N, S, S, C) float32 in [-1, 1]; masks (N, S, S, 1) float32 in {0, 1}.
    """
    ks = list(slices)
    channels = []
    for v in volumes:
        stack = np.rot90(v[:, :, ks], axes=(0, 1)).transpose(2, 0, 1)
        channels.append(np.clip(_resize_stack(stack, image_size, float(v.min()), order=1), -1.0, 1.0))
    m = np.rot90(mask[:, :, ks] > 0, axes=(0, 1)).transpose(2, 0, 1).astype(np.float32)
    m = (_resize_stack(m, image_size, 0.0, order=1) > 0.5).astype(np.float32)
    return np.stack(channels, axis=-1).astype(np.float32), m[..., None]
