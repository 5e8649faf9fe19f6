"""Evaluation metrics: plain functions on arrays (NumPy or JAX) with documented conventions.

Modules are imported by name, e.g. `from jaxdiff.metrics import segmentation`:
  segmentation   overlap (Dice, IoU, rates) and surface-distance (Hausdorff, HD95, ASSD) metrics, per case,
                 with stated empty-mask and voxel-spacing conventions, plus the S0 seed's batch-level values
  distribution   distances between sets of images (generated vs real)
"""
