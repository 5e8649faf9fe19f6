"""File input and output: NIfTI volumes with their affine (RAS on read)."""
from jaxdiff.io.nifti import load_nifti, nifti_shape, save_nifti

__all__ = ["load_nifti", "nifti_shape", "save_nifti"]
