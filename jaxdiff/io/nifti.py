"""NIfTI in and out with the affine kept.

Volumes are read reoriented to the closest RAS+ orientation (`nibabel.as_closest_canonical`): array axis 0
runs toward patient Right, axis 1 toward Anterior, axis 2 toward Superior, and the returned affine maps voxel
indices (i, j, k, 1) to scanner millimetres. Writing always takes an explicit affine, so a saved volume lands
where its source was (never an identity affine by accident).
"""
from __future__ import annotations

import os
import zlib

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
    return ras_geometry(_open(path))[0]


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


def ras_geometry(img) -> tuple[tuple, np.ndarray]:
    """(shape, affine) of a nibabel image after RAS reorientation, from its header only (no data read)."""
    ornt = nib.orientations.io_orientation(img.affine)
    shape = list(img.shape)
    for axis, (target, _) in enumerate(ornt):
        shape[int(target)] = img.shape[axis]
    affine = np.asarray(img.affine, np.float64) @ nib.orientations.inv_ornt_aff(ornt, img.shape)
    return tuple(int(n) for n in shape), affine


def _gunzip(raw: bytes) -> bytes:
    """The decompressed bytes of a (possibly multi-member) gzip file's contents; EOFError when truncated."""
    out = []
    while raw:
        d = zlib.decompressobj(wbits=31)
        out.append(d.decompress(raw))
        if not d.eof:
            raise EOFError("truncated (gzip stream ended early)")
        raw = d.unused_data.lstrip(b"\0")   # gzip allows zero padding after a member
    return b"".join(out)


def check_nifti(path: str) -> dict:
    """Read a whole NIfTI file (header and every voxel) and describe it, for checking a data set up front.

    Faster than `load_nifti` on .nii.gz (one zlib call over the file, no float conversion) and releases the
    GIL while decompressing, so files can be checked in threads.

    Returns:
      {"shape": RAS array shape (3D with a trailing axis of 1 dropped), "affine": (4, 4) RAS affine as nested
       lists, "integer": all values are whole numbers, "constant": all values are equal}.
    Raises:
      InputError "<path>: <reason>" when the file is missing, not NIfTI, truncated, shorter than its header
      says, or holds NaN/inf.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    try:
        if path.endswith(".gz"):
            with open(path, "rb") as f:
                raw = _gunzip(f.read())
            klass = nib.Nifti2Image if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Image
            img = klass.from_bytes(raw)
        else:
            img = nib.load(path, mmap=False)
        shape, affine = ras_geometry(img)
        data = np.asanyarray(img.dataobj)
    except EOFError as e:
        raise InputError(f"{path}: {e}") from None
    except zlib.error as e:
        raise InputError(f"{path}: not a gzip file or corrupt gzip data ({e})") from None
    except Exception as e:  # nibabel header errors, a data block shorter than the header says
        raise InputError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if len(shape) == 4 and shape[-1] == 1:
        shape = shape[:3]
    integer = True
    if data.dtype.kind in "fc":
        finite = np.isfinite(data)
        if not finite.all():
            raise InputError(f"{path}: contains {int(finite.size - np.count_nonzero(finite))} NaN or infinite "
                             f"values")
        integer = bool(np.all(np.mod(data, 1) == 0))
    constant = bool(data.size == 0 or data.min() == data.max())
    return {"shape": list(shape), "affine": affine.tolist(), "integer": integer, "constant": constant}


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
    from jaxdiff.io import files
    with files.local_output(path) as local:  # parent folders created; a URL (gs://...): written here, uploaded
        nib.save(img, local)
    return path
