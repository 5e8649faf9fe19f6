"""IXI T1 volumes (`IXI*-T1.nii.gz` files in one folder), preprocessed for 3D generation.

Per file: read and reorient to the closest RAS+ orientation (`nibabel.as_closest_canonical`, via
`jaxdiff.io.nifti.load_nifti`), resample to `spacing` mm with trilinear interpolation (`scipy.ndimage.
affine_transform`; voxel centre 0 stays in place), clip to the (0.5, 99.5) intensity percentiles and map that
range to [-1, 1], then centre-crop or pad (with -1, the background) to `shape`. The returned affine is exact
for every step, so a volume written with it lands where the scan was. Cases are split by file at random
(seeded, by fractions); a missing folder, no matching files or a corrupt file raise InputError naming them.
"""
from __future__ import annotations

import functools
import glob
import os

import numpy as np
from scipy import ndimage

from jaxdiff.data.sources import DEFAULT_FRACTIONS, check_split, excluded_cases, split_cases
from jaxdiff.errors import InputError
from jaxdiff.io.nifti import load_nifti

PATTERN = "IXI*-T1.nii.gz"
DEFAULT_SHAPE = (160, 192, 160)
DEFAULT_SPACING = (1.0, 1.0, 1.0)
DEFAULT_PERCENTILES = (0.5, 99.5)


def _translate(offset) -> np.ndarray:
    """(4, 4) voxel-index translation by `offset` (3,) voxels."""
    m = np.eye(4)
    m[:3, 3] = offset
    return m


def resample(volume: np.ndarray, affine: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear resampling of an (X, Y, Z) volume to `spacing` mm per axis; returns (volume, affine).

    Output voxel i' sits at input voxel i = s i' with s = spacing / input spacing (voxel 0 fixed), so the new
    affine is affine @ diag(s, 1); the output covers the input field of view (round(n / s) voxels per axis).
    """
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    s = np.asarray(spacing, np.float64) / zooms
    if np.allclose(s, 1.0):
        return volume, affine
    out_shape = tuple(max(1, int(round(n / f))) for n, f in zip(volume.shape, s))
    out = ndimage.affine_transform(volume, s, output_shape=out_shape, order=1, mode="nearest")
    return out.astype(np.float32), affine @ np.diag([*s, 1.0])


def crop_or_pad(volume: np.ndarray, affine: np.ndarray, shape, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop or pad (with `fill`) an (X, Y, Z) volume to `shape`; returns (volume, shifted affine)."""
    offset = [(n - m) // 2 for n, m in zip(volume.shape, shape)]     # > 0 crop start, < 0 padding before
    out = np.full(shape, fill, np.float32)
    src = tuple(slice(max(o, 0), max(o, 0) + min(n, m)) for o, n, m in zip(offset, volume.shape, shape))
    dst = tuple(slice(max(-o, 0), max(-o, 0) + min(n, m)) for o, n, m in zip(offset, volume.shape, shape))
    out[dst] = volume[src]
    return out, affine @ _translate(offset)


def clip_normalise(volume: np.ndarray, percentiles=DEFAULT_PERCENTILES, name: str = "volume") -> np.ndarray:
    """Clip to the given intensity percentiles and map [low, high] linearly to [-1, 1] (float32)."""
    low, high = np.percentile(volume, percentiles)
    if not high > low:
        raise InputError(f"{name}: constant intensities, cannot normalise")
    return (2.0 * (np.clip(volume, low, high) - low) / (high - low) - 1.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def load_volume(path: str, shape: tuple, spacing: tuple, percentiles: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(image (X, Y, Z) float32 in [-1, 1], affine (4, 4) float64) of one IXI file after the whole recipe."""
    data, affine = load_nifti(path)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    data, affine = resample(data, affine, spacing)
    data = clip_normalise(data, percentiles, path)
    return crop_or_pad(data, affine, shape, -1.0)


def _triple(value, key: str, cast=float) -> tuple:
    """An int/float or 3-sequence config value as a 3-tuple (InputError naming `key` otherwise)."""
    t = (cast(value),) * 3 if isinstance(value, (int, float)) else tuple(cast(v) for v in value)
    if len(t) != 3 or min(t) <= 0:
        raise InputError(f"config key {key}: {value!r} is not a positive number or 3 of them")
    return t


class IxiVolumes:
    """IXI T1 volumes of one split: {"image": (X, Y, Z, 1) float32 in [-1, 1], "affine": (4, 4) float32
    voxel -> mm (RAS), "case": int32 index of the file in the sorted folder listing}.

    Args: root (folder with `IXI*-T1.nii.gz`), split, shape (output voxels), spacing (mm), percentiles
    (clip range), seed and fractions (case split), exclude (file names to leave out, `data.exclude_cases`;
    removed after the split). Volumes are cached per process (8 most recent).
    """
    modalities = ("t1",)

    def __init__(self, root: str, split: str = "train", shape=DEFAULT_SHAPE, spacing=DEFAULT_SPACING,
                 percentiles=DEFAULT_PERCENTILES, seed: int = 0, fractions=DEFAULT_FRACTIONS, exclude=()):
        if not os.path.isdir(root):
            raise InputError(f"config key data.root: IXI folder {root!r} not found")
        self.files = sorted(glob.glob(os.path.join(root, PATTERN)))
        if not self.files:
            raise InputError(f"config key data.root: no {PATTERN} files in {root!r}")
        self.shape, self.spacing = tuple(shape), tuple(spacing)
        self.percentiles = tuple(float(p) for p in percentiles)
        excluded = set(exclude)
        self.cases = [i for i in split_cases(range(len(self.files)), int(seed), fractions)[check_split(split)]
                      if os.path.basename(self.files[i]) not in excluded]
        if not self.cases:
            raise InputError(f"config key data.fractions: {len(self.files)} IXI files leave split {split!r} empty")

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, idx: int) -> dict:
        case = self.cases[idx]
        image, affine = load_volume(self.files[case], self.shape, self.spacing, self.percentiles)
        return {"image": image[..., None].copy(), "affine": affine.astype(np.float32), "case": np.int32(case)}


def from_config(d, split: str) -> IxiVolumes:
    """IXI source from a `data` block: root, image_size (output shape, int or 3), spacing (mm, number or 3),
    clip_percentiles (low, high), seed, fractions."""
    percentiles = tuple(d.get("clip_percentiles", DEFAULT_PERCENTILES))
    if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise InputError(f"config key data.clip_percentiles: {percentiles!r} is not (low, high) in [0, 100]")
    return IxiVolumes(str(d.get("root", "") or ""), split, shape=_triple(d.get("image_size", DEFAULT_SHAPE),
                                                                         "data.image_size", int),
                      spacing=_triple(d.get("spacing", DEFAULT_SPACING), "data.spacing"), percentiles=percentiles,
                      seed=int(d.get("seed", 0)), fractions=tuple(d.get("fractions", DEFAULT_FRACTIONS)),
                      exclude=excluded_cases(d))
