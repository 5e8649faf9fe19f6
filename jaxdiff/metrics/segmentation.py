"""Segmentation metrics for binary masks: overlap and surface distance, per case, with stated conventions.

Inputs
  pred, truth: binary masks, bool or numbers in {0, 1} (anything else raises `InputError`), NumPy or JAX.
  Overlap metrics (confusion, dice, iou, sensitivity, specificity, precision, accuracy, balanced_accuracy)
  count over all elements, so any shape works (a whole batch gives batch-level values); they use NumPy or
  jax.numpy to match the input and run inside `jax.jit` (the binary check is skipped on traced values).
  Surface metrics (hausdorff, hd95, average_surface_distance) take one case of shape (H, W) or (D, H, W),
  a trailing channel of size 1 allowed and squeezed, and run on the host (NumPy/SciPy).
  spacing: voxel size in mm per axis (len == case ndim); None means 1.0 per axis. Distances are in mm
  (or voxels when the spacing is 1).

Surfaces and distances
  The surface of a mask is the mask minus its binary erosion with a full-connectivity structuring element
  (3x3 or 3x3x3), outside the array counting as background. `surface`, `case_metrics` take `connectivity`:
  1 erodes with the face-connected cross (6 neighbours in 3-D), as MONAI's `get_mask_edges` (scipy's default
  erosion) and MedPy's `hd95` do; None (default) = full connectivity (ndim).
  Distances from one surface to the other come from `scipy.ndimage.distance_transform_edt(~surface,
  sampling=spacing)`. hausdorff = max of both directed maxima; hd95 = max(95th percentile of pred->truth
  distances, 95th percentile of truth->pred distances) (MONAI); average_surface_distance (ASSD) = mean of
  all distances of both directions pooled.

Empty-mask conventions (per case)
  both empty:        dice = iou = 1.0; hausdorff = hd95 = average_surface_distance = 0.0
  exactly one empty: dice = iou = 0.0; hausdorff = hd95 = average_surface_distance = inf
  sensitivity = nan when truth has no positives; precision = nan when pred has no positives;
  specificity = nan when truth has no negatives; balanced_accuracy = nan when either of its rates is nan.
  `summarize` averages the finite values of each metric and counts the non-finite ones (undefined cases).

`seed_batch_metrics` reproduces the TransUNet-style BraTS segmenter's batch-level definitions for comparison
(see its docstring).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff

from jaxdiff.errors import InputError

OVERLAP = ("dice", "iou", "sensitivity", "specificity", "precision", "accuracy", "balanced_accuracy")
SURFACE = ("hausdorff", "hd95", "average_surface_distance")


def _is_jax(x) -> bool:
    return isinstance(x, jax.Array)


def _mask(x, name: str):
    """A binary mask (bool or {0, 1}) -> bool array on the same backend; non-binary raises `InputError`."""
    x = x if _is_jax(x) else np.asarray(x)
    if x.size == 0:
        raise InputError(f"{name}: empty array of shape {tuple(x.shape)}")
    if x.dtype == bool:
        return x
    if not isinstance(x, jax.core.Tracer):
        xp = jnp if _is_jax(x) else np
        if not bool(xp.all((x == 0) | (x == 1))):
            raise InputError(f"{name}: non-binary values (expected bool or 0/1) in mask of shape {tuple(x.shape)}")
    return x != 0


def _pair(pred, truth):
    """Validated bool (pred, truth) of equal shape."""
    p, t = _mask(pred, "pred"), _mask(truth, "truth")
    if p.shape != t.shape:
        raise InputError(f"pred and truth: shapes {tuple(p.shape)} and {tuple(t.shape)} differ")
    return p, t


def _counts(p, t):
    """(tp, fp, fn, tn) of bool arrays p, t (NumPy ints, or JAX int arrays if either input is JAX)."""
    xp = jnp if _is_jax(p) or _is_jax(t) else np
    tp, fp, fn = xp.sum(p & t), xp.sum(p & ~t), xp.sum(~p & t)
    return tp, fp, fn, p.size - tp - fp - fn


def _ratio(num, den, if_empty, xp):
    """num / den, or `if_empty` where den == 0."""
    return xp.where(den > 0, num / xp.maximum(den, 1), if_empty)


def _overlap(tp, fp, fn, tn) -> dict:
    """All overlap metrics from confusion counts, with the module's empty conventions."""
    xp = jnp if any(_is_jax(c) for c in (tp, fp, fn, tn)) else np
    sens = _ratio(tp, tp + fn, math.nan, xp)
    spec = _ratio(tn, tn + fp, math.nan, xp)
    return {"dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0, xp),
            "iou": _ratio(tp, tp + fp + fn, 1.0, xp),
            "sensitivity": sens,
            "specificity": spec,
            "precision": _ratio(tp, tp + fp, math.nan, xp),
            "accuracy": (tp + tn) / (tp + fp + fn + tn),
            "balanced_accuracy": (sens + spec) / 2}


def _overlap_metric(name: str, pred, truth):
    """One overlap metric: a Python float for NumPy inputs, a 0-d array for JAX inputs."""
    p, t = _pair(pred, truth)
    value = _overlap(*_counts(p, t))[name]
    return value if _is_jax(value) else float(value)


def confusion(pred, truth):
    """(tp, fp, fn, tn) voxel counts of binary masks of any equal shape.

    Python ints for NumPy inputs; int32 JAX scalars for JAX inputs (works inside `jax.jit`).
    """
    counts = _counts(*_pair(pred, truth))
    return counts if any(_is_jax(c) for c in counts) else tuple(int(c) for c in counts)


def dice(pred, truth):
    """Dice = 2 tp / (2 tp + fp + fn) of binary masks of any equal shape. Both empty -> 1.0, one empty -> 0.0."""
    return _overlap_metric("dice", pred, truth)


def iou(pred, truth):
    """IoU (Jaccard) = tp / (tp + fp + fn) of binary masks. Both empty -> 1.0, one empty -> 0.0."""
    return _overlap_metric("iou", pred, truth)


def sensitivity(pred, truth):
    """Sensitivity (recall) = tp / (tp + fn) of binary masks; nan when truth has no positives."""
    return _overlap_metric("sensitivity", pred, truth)


def specificity(pred, truth):
    """Specificity = tn / (tn + fp) of binary masks; nan when truth has no negatives."""
    return _overlap_metric("specificity", pred, truth)


def precision(pred, truth):
    """Precision = tp / (tp + fp) of binary masks; nan when pred has no positives."""
    return _overlap_metric("precision", pred, truth)


def accuracy(pred, truth):
    """Accuracy = (tp + tn) / number of voxels of binary masks (always defined)."""
    return _overlap_metric("accuracy", pred, truth)


def balanced_accuracy(pred, truth):
    """(sensitivity + specificity) / 2 of binary masks; nan when either rate is undefined (nan)."""
    return _overlap_metric("balanced_accuracy", pred, truth)


def _case_pair(pred, truth, spacing):
    """Validated host bool masks (2-D or 3-D, trailing size-1 channel squeezed) and spacing as a tuple."""
    p, t = (np.asarray(m) for m in _pair(pred, truth))
    s = None if spacing is None else np.atleast_1d(np.asarray(spacing, np.float64))
    if p.ndim in (3, 4) and p.shape[-1] == 1 and (s is None or s.size == p.ndim - 1):
        p, t = p[..., 0], t[..., 0]
    if p.ndim not in (2, 3):
        raise InputError(f"pred and truth: expected one 2-D or 3-D case (optional trailing channel of 1), "
                         f"got shape {tuple(p.shape)}")
    s = (1.0,) * p.ndim if s is None else tuple(float(v) for v in s.reshape(-1))
    if len(s) != p.ndim or not all(math.isfinite(v) and v > 0 for v in s):
        raise InputError(f"spacing: {spacing} must give {p.ndim} positive voxel sizes in mm")
    return p, t, s


def surface(mask, connectivity: int | None = None):
    """Boundary voxels (bool, same shape) of a bool mask (H, W) or (D, H, W).

    mask AND NOT erosion(mask) with the structuring element of `connectivity` (1 = face neighbours, None =
    full, ndim); outside counts as background.
    """
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity or mask.ndim)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def _distances(p, t, spacing, connectivity=None):
    """(pred->truth, truth->pred) surface distances in mm of non-empty bool masks p, t."""
    idx = np.argwhere(p | t)  # crop to the union's box plus one voxel of background: surfaces unchanged
    box = tuple(slice(a, b) for a, b in zip(np.maximum(idx.min(0) - 1, 0), idx.max(0) + 2))
    sp, st = surface(p[box], connectivity), surface(t[box], connectivity)
    to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    return to_truth, to_pred


def surface_distances(pred, truth, spacing=None):
    """Distances in mm from each surface voxel of pred to truth's surface, and from truth's to pred's.

    pred, truth: non-empty binary masks of one case, (H, W) or (D, H, W) (+ optional trailing channel 1);
    spacing: mm per axis (None = 1.0). Returns two 1-D float arrays. An empty mask raises `InputError`.
    """
    p, t, s = _case_pair(pred, truth, spacing)
    for name, m in (("pred", p), ("truth", t)):
        if not m.any():
            raise InputError(f"{name}: empty mask has no surface")
    return _distances(p, t, s)


def _surface_metrics(p, t, spacing, connectivity=None) -> dict:
    """hausdorff, hd95, average_surface_distance (mm) of validated masks with the empty conventions."""
    if not (p.any() and t.any()):
        return dict.fromkeys(SURFACE, 0.0 if not (p.any() or t.any()) else math.inf)
    d_pt, d_tp = _distances(p, t, spacing, connectivity)
    return {"hausdorff": float(max(d_pt.max(), d_tp.max())),
            "hd95": float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))),
            "average_surface_distance": float((d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size))}


def _surface_metric(name: str, pred, truth, spacing) -> float:
    return _surface_metrics(*_case_pair(pred, truth, spacing))[name]


def hausdorff(pred, truth, spacing=None) -> float:
    """Symmetric Hausdorff distance in mm between the surfaces of one case's masks (H, W) or (D, H, W).

    spacing: mm per axis (None = 1.0). Both empty -> 0.0; exactly one empty -> inf.
    """
    return _surface_metric("hausdorff", pred, truth, spacing)


def hd95(pred, truth, spacing=None) -> float:
    """95th-percentile Hausdorff distance in mm (MONAI: max of the two directed 95th percentiles).

    One case (H, W) or (D, H, W); spacing: mm per axis (None = 1.0). Both empty -> 0.0; one empty -> inf.
    """
    return _surface_metric("hd95", pred, truth, spacing)


def average_surface_distance(pred, truth, spacing=None) -> float:
    """Average symmetric surface distance (ASSD) in mm: mean of both directions' distances pooled.

    One case (H, W) or (D, H, W); spacing: mm per axis (None = 1.0). Both empty -> 0.0; one empty -> inf.
    """
    return _surface_metric("average_surface_distance", pred, truth, spacing)


def case_metrics(pred, truth, spacing=None, connectivity: int | None = None) -> dict:
    """Every overlap and surface metric of one case (H, W) or (D, H, W) as a dict name -> float.

    Conventions as in the module docstring; distances in mm for `spacing` (None = 1.0 per axis); surfaces
    eroded with `connectivity` (None = full, 1 = face neighbours as MONAI).
    """
    p, t, s = _case_pair(pred, truth, spacing)
    overlap = {k: float(v) for k, v in _overlap(*_counts(p, t)).items()}
    return {**overlap, **_surface_metrics(p, t, s, connectivity)}


def per_case(pred_batch, truth_batch, spacing=None) -> dict:
    """Metrics of each case of a batch: dict name -> (N,) float64 array (keys OVERLAP + SURFACE).

    pred_batch, truth_batch: (N, H, W[, 1]) or (N, D, H, W[, 1]) binary masks; spacing: mm per case axis.
    """
    p, t = (np.asarray(m) for m in _pair(pred_batch, truth_batch))
    if p.ndim < 3:
        raise InputError(f"pred_batch: expected (N, H, W) or (N, D, H, W), got shape {tuple(p.shape)}")
    rows = [case_metrics(a, b, spacing) for a, b in zip(p, t)]
    return {k: np.array([r[k] for r in rows], np.float64) for k in OVERLAP + SURFACE}


def summarize(per_case_values: dict) -> dict:
    """Means over cases of each metric, skipping non-finite values, and counts of those skipped.

    per_case_values: name -> (N,) values (e.g. from `per_case`). Returns {name: mean of the finite values
    (nan if none)} followed by {name + "_undefined": number of nan or inf cases}.
    """
    values = {k: np.asarray(v, np.float64).reshape(-1) for k, v in per_case_values.items()}
    finite = {k: v[np.isfinite(v)] for k, v in values.items()}
    means = {k: float(f.mean()) if f.size else math.nan for k, f in finite.items()}
    return {**means, **{f"{k}_undefined": int(values[k].size - finite[k].size) for k in values}}


def _seed_chunk(p, t) -> dict:
    """The TransUNet-style segmenter's metrics of one batch: global overlap counts and the 0-if-empty point-set
    Hausdorff."""
    overlap = {k: float(v) for k, v in _overlap(*_counts(p, t)).items()}
    pp, tp = np.argwhere(p).astype(np.float64), np.argwhere(t).astype(np.float64)
    hd = 0.0 if not (len(pp) and len(tp)) else max(directed_hausdorff(pp, tp)[0], directed_hausdorff(tp, pp)[0])
    return {**overlap, "hausdorff": float(hd)}


def seed_batch_metrics(pred_batch, truth_batch, batch_size: int | None = None) -> dict:
    """The TransUNet-style BraTS segmenter's batch-level metrics, for comparison with its reported numbers (not
    per case).

    pred_batch, truth_batch: binary masks with a leading batch axis, e.g. (N, H, W) or (N, H, W, 1).
    Overlap metrics come from confusion counts pooled over the whole batch (rates undefined on a batch are
    nan). Hausdorff (in voxels, no spacing) is taken between the point sets of ALL foreground voxels of the
    batch, with the batch index as a coordinate, and is 0.0 when either set is empty (the original's convention).
    batch_size: if given, the batch is cut into consecutive chunks of that size and the chunk values are
    averaged, as the original averaged over its test batches (16). Returns a dict name -> float.
    """
    p, t = (np.asarray(m) for m in _pair(pred_batch, truth_batch))
    size = len(p) if batch_size is None else batch_size
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"batch_size: {batch_size} must be a positive integer")
    chunks = [_seed_chunk(p[i:i + size], t[i:i + size]) for i in range(0, len(p), size)]
    return {k: float(np.mean([c[k] for c in chunks])) for k in chunks[0]}
