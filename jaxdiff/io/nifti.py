"""NIfTI in and out with the affine kept.

Volumes are read reoriented to the closest RAS+ orientation (`nibabel.as_closest_canonical`): array axis 0
runs toward patient Right, axis 1 toward Anterior, axis 2 toward Superior, and the returned affine maps voxel
indices (i, j, k, 1) to scanner millimetres. Writing always takes an explicit affine, so a saved volume lands
where its source was (never an identity affine by accident).
"""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from jaxdiff.errors import InputError


def _open(path: str):
    """The nibabel image at `path`; InputError naming the file when missing or unreadable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    try:
        return nib.load(path)
    except Exception as e:  # nibabel, gzip and OS errors all mean "not a readable NIfTI file"
        raise InputError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from None


def nifti_shape(path: str) -> tuple:
    """Array shape of the NIfTI file at `path` after RAS reorientation, reading the header only."""
    img = _open(path)
    shape = list(img.shape)
    for axis, (target, _) in enumerate(nib.orientations.io_orientation(img.affine)):
        shape[int(target)] = img.shape[axis]
    return tuple(int(n) for n in shape)


def load_nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume reoriented to RAS.

    Returns:
      (array float32 of the image's shape (X, Y, Z[, ...]) in RAS axis order, affine float64 (4, 4) in mm).
    Raises:
      InputError naming the file when it is missing, corrupt (bad header, truncated gzip) or holds NaN/inf.
    """
    path = os.fspath(path)
    img = _open(path)
    try:
        img = nib.as_closest_canonical(img)
        data = img.get_fdata(dtype=np.float32)
    except Exception as e:  # truncated or inconsistent files fail only when the data are read
        raise InputError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: contains NaN or infinite values")
    return data, np.asarray(img.affine, dtype=np.float64)


def _storage_array(array) -> np.ndarray:
    """`array` in a NIfTI-friendly dtype: bool/int -> uint8 or int32, float -> float32."""
    a = np.asarray(array)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        small = a.size == 0 or (a.min() >= 0 and a.max() <= 255)
        return a.astype(np.uint8 if small else np.int32)
    return a.astype(np.float32)


def save_nifti(path: str, array, affine) -> str:
    """Write `array` to `path` (.nii or .nii.gz) with `affine` as both qform and sform.

    Args:
      path: output file; parent folders are created.
      array: (X, Y, Z) or (X, Y, Z, C) volume in the voxel order `affine` describes; a trailing channel
        axis of size 1 is dropped. Booleans and integers are stored as uint8/int32, floats as float32.
      affine: (4, 4) voxel-to-mm matrix (e.g. the one `load_nifti` returned). Required.
    Returns:
      `path`.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"save_nifti({path}): affine must be a finite (4, 4) matrix, got shape {affine.shape}")
    data = _storage_array(array)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    nib.save(img, path)
    return path
