"""Evaluation metrics: plain functions on arrays (NumPy or JAX) with documented conventions; no networks.

Modules are imported by name, e.g. `from jaxdiff.metrics import segmentation`:
  segmentation   overlap (Dice, IoU, rates) and surface-distance (Hausdorff, HD95, ASSD) metrics, per case,
                 with stated empty-mask and voxel-spacing conventions, plus TransUNet-style batch-level values
  regions        per-case 3D metrics per BraTS region (WT, TC, ET) in mm, and their summaries
  distribution   distances between sets of images or feature arrays: MMD, FID, KID, Inception Score, and the
                 LPIPS-style distance between feature maps
  image_quality  PSNR, SSIM (= skimage Gaussian SSIM), DSSIM, MS-SSIM, gradient sharpness; 2D and 3D batches
  super_resolution  interpolation baselines and per-image pixel scores of super-resolved images
  classification accuracy, precision, recall, F1, ROC-AUC, confusion matrix

Feature extractors (Inception, random encoders) and evaluations built on them are in `jaxdiff.evaluators`.
"""
