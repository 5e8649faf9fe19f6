"""Evaluation metrics: plain functions on arrays (NumPy or JAX) with documented conventions.

Modules are imported by name, e.g. `from jaxdiff.metrics import segmentation`:
  segmentation   overlap (Dice, IoU, rates) and surface-distance (Hausdorff, HD95, ASSD) metrics, per case,
                 with stated empty-mask and voxel-spacing conventions, plus the S0 seed's batch-level values
  distribution   distances between sets of images (generated vs real): MMD, FID, KID, Inception Score
  features       pluggable feature extractors (Inception from a weights file, in-project encoder), LPIPS-style
  image_quality  PSNR, SSIM (= skimage Gaussian SSIM), DSSIM, MS-SSIM, gradient sharpness; 2D and 3D batches
  features3d     MMD / Frechet distance between sets of volumes on a pluggable 3D encoder
  super_resolution  SR vs interpolation report (tables and figure)
  classification accuracy, precision, recall, F1, ROC-AUC, confusion matrix
"""
