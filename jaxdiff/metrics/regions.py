"""Per-case, per-region 3D segmentation metrics on label volumes, as the BraTS challenge scores them.

Pure functions on NumPy arrays; the binary metrics and the surface definitions are
`jaxdiff.metrics.segmentation`'s (`segmentation.case_metrics`), applied to one binary mask per region.

Regions
  A region table maps a name to the labels whose union is the region's mask, or to None for every label > 0:
    BRATS_REGIONS       BraTS 2017-2021 labels (1 necrotic core, 2 oedema, 4 enhancing tumour):
                        WT = {1, 2, 4}, TC = {1, 4}, ET = {4}
    BRATS_2023_REGIONS  BraTS 2023+ labels (enhancing tumour relabelled 3): WT = {1, 2, 3}, TC = {1, 3}, ET = {3}
    FOREGROUND          {"foreground": None}: every label > 0
  `regions_for_labels` picks BRATS_REGIONS when the labels of the truths are within {0, 1, 2, 4} with more than one
  foreground label, FOREGROUND otherwise; BraTS 2023 labels ({1, 2, 3}) are not guessed (a 3-class dataset has
  the same labels): pass BRATS_2023_REGIONS. A nonzero label of pred or truth that no region of a BraTS-style table
  contains (e.g. 3 under BRATS_REGIONS) raises `InputError` rather than being scored as background.

Metrics (per case and region; keys of `case_metrics`, columns of the per-case CSV)
  dice, iou, sensitivity, specificity: overlap counts over the whole volume.
  hd95_mm: max of the two directed 95th percentiles of surface distances in mm (MONAI's
    `compute_hausdorff_distance(percentile=95)`, DeepMind surface-distance's robust Hausdorff).
  assd_mm: average symmetric surface distance in mm, both directions' distances pooled (MONAI's
    `compute_average_surface_distance(symmetric=True)`).
  truth_voxels, pred_voxels: voxels in the region's truth and predicted masks.
  Surfaces: mask minus its erosion with `connectivity` (default 1, face neighbours, as MONAI's `get_mask_edges` and
  MedPy's `hd95`; the image border counts as background); distances from `scipy.ndimage.distance_transform_edt`
  with `sampling=spacing`. With these defaults hd95_mm and assd_mm equal MONAI's values (tested).

Empty-case conventions (defaults = BraTS's)
  both empty (`both_empty="perfect"`): dice = iou = 1, hd95_mm = assd_mm = 0, as the BraTS evaluation and
    nnU-Net's BraTS scripts (`compute_BraTS_dice` / `compute_BraTS_HD95`) do. `both_empty="nan"`: all four are
    nan (undefined), as nnU-Net v2's `compute_metrics` does for Dice and IoU; `summarize_cases` then leaves them
    out of the statistics and counts them as undefined.
  exactly one empty: dice = iou = 0; hd95_mm = assd_mm = `empty_hd95`: "diagonal" (default) = the volume's
    diagonal in mm, sqrt(sum((shape_i * spacing_i)^2)) = 373.13 mm for BraTS's 240 x 240 x 155 at 1 mm, the value
    BraTS and nnU-Net's BraTS scripts use (373.12866; BraTS 2023's code uses 374); or a number in mm (inf and nan
    allowed: counted as undefined in the summary).
  sensitivity = nan when the truth region is empty; specificity = nan when the truth region fills the volume.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.metrics import segmentation

BRATS_REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
BRATS_2023_REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
FOREGROUND = {"foreground": None}
METRICS = ("dice", "iou", "sensitivity", "specificity", "hd95_mm", "assd_mm")
COUNTS = ("truth_voxels", "pred_voxels")
STATISTICS = ("mean", "std", "median", "q1", "q3", "n", "undefined")
_FROM_SEGMENTATION = {"dice": "dice", "iou": "iou", "sensitivity": "sensitivity", "specificity": "specificity",
                      "hd95_mm": "hd95", "assd_mm": "average_surface_distance"}


def regions_for_labels(labels_present) -> dict:
    """The region table for a dataset whose truth volumes hold `labels_present` (iterable of ints, 0 allowed).

    BRATS_REGIONS when the labels are within {0, 1, 2, 4} with more than one foreground label, FOREGROUND
    ({"foreground": None}, every label > 0) otherwise. Pass the labels of all the truths, not of one case (a
    BraTS case without enhancing tumour is still a BraTS case).
    """
    labels = {int(v) for v in np.asarray(list(labels_present)).reshape(-1)}
    foreground = labels - {0}
    return dict(BRATS_REGIONS) if foreground <= {1, 2, 4} and len(foreground) > 1 else dict(FOREGROUND)


def as_labels(volume, name: str) -> np.ndarray:
    """Integer label volume (D, H, W) from ints, bools or integral floats; anything else raises `InputError`."""
    v = np.asarray(volume)
    if v.ndim != 3:
        raise InputError(f"{name}: expected one 3-D label volume (D, H, W), got shape {tuple(v.shape)}")
    if v.dtype == bool:
        return v.astype(np.uint8)
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
        raise InputError(f"{name}: label volume of dtype {v.dtype} (expected integer labels)")
    if np.issubdtype(v.dtype, np.floating):
        if not np.all(np.isfinite(v)) or not np.array_equal(v, np.round(v)):
            raise InputError(f"{name}: non-integer values in a label volume of dtype {v.dtype}")
        v = v.astype(np.int64)
    if v.size and v.min() < 0:
        raise InputError(f"{name}: negative labels in a label volume")
    return v


def check_regions(regions) -> dict:
    """A validated region table {name: tuple of labels >= 1, or None}; a bad table raises `InputError`."""
    if not isinstance(regions, Mapping) or not regions:
        raise InputError(f"regions: {regions!r} must be a non-empty mapping name -> labels (or None for > 0)")
    out = {}
    for name, labels in regions.items():
        if labels is not None:
            labels = tuple(int(v) for v in np.atleast_1d(labels))
            if not labels or min(labels) < 1:
                raise InputError(f"regions: {name} = {labels} must list labels >= 1 (or be None for every label > 0)")
        out[str(name)] = labels
    return out


def labels_in(volume) -> set:
    """The set of labels (ints) in a non-negative integer label volume."""
    v = np.asarray(volume)
    if v.dtype == bool or (v.size and v.max() < 1 << 16):
        return {int(i) for i in np.flatnonzero(np.bincount(v.reshape(-1).astype(np.intp)))}
    return {int(i) for i in np.unique(v)}


def _uncovered(volume, regions: dict) -> set:
    """Nonzero labels of `volume` that no region contains (none when a region is None, i.e. every label > 0)."""
    if any(v is None for v in regions.values()):
        return set()
    covered = {label for labels in regions.values() for label in labels}
    return labels_in(volume) - covered - {0}


def _region_mask(volume, labels) -> np.ndarray:
    return volume > 0 if labels is None else np.isin(volume, labels)


def diagonal_mm(shape, spacing) -> float:
    """Diagonal of a volume of `shape` voxels of `spacing` mm: sqrt(sum((n_i * s_i)^2))."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def empty_distance(empty_hd95, shape, spacing) -> float:
    """hd95_mm / assd_mm for a case with exactly one empty mask: "diagonal" -> `diagonal_mm`, or the number."""
    if isinstance(empty_hd95, str):
        if empty_hd95 != "diagonal":
            raise InputError(f"empty_hd95: {empty_hd95!r} must be 'diagonal' or a number in mm")
        return diagonal_mm(shape, spacing)
    try:
        value = float(empty_hd95)
    except (TypeError, ValueError):
        raise InputError(f"empty_hd95: {empty_hd95!r} must be 'diagonal' or a number in mm") from None
    if value < 0:
        raise InputError(f"empty_hd95: {empty_hd95!r} must not be negative")
    return value


def case_metrics(pred_labels, truth_labels, spacing=None, regions=None, *, empty_hd95="diagonal",
                 both_empty: str = "perfect", connectivity: int = 1) -> dict:
    """Metrics of one 3D case per region: {region: {metric: float}} with metrics METRICS + COUNTS.

    pred_labels, truth_labels: label volumes (D, H, W) of the same shape (ints, bools or integral floats).
    spacing: voxel size in mm per axis (3 numbers; None = 1 mm). regions: a region table (module docstring);
    None = `regions_for_labels` of this case's truth labels (pass the dataset's table to compare cases).
    empty_hd95: hd95_mm and assd_mm when exactly one of pred and truth is empty: "diagonal" (the volume's
    diagonal in mm) or a number. both_empty: "perfect" (Dice = IoU = 1, distances 0, BraTS) or "nan".
    connectivity: of the erosion that defines surfaces (1 = face neighbours, as MONAI; 3 = full).
    """
    pred, truth = as_labels(pred_labels, "pred"), as_labels(truth_labels, "truth")
    if pred.shape != truth.shape:
        raise InputError(f"pred and truth: shapes {pred.shape} and {truth.shape} differ")
    if both_empty not in ("perfect", "nan"):
        raise InputError(f"both_empty: {both_empty!r} must be 'perfect' or 'nan'")
    spacing = (1.0,) * 3 if spacing is None else tuple(float(s) for s in np.atleast_1d(spacing))
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"spacing: {spacing} must give 3 positive voxel sizes in mm")
    regions = check_regions(regions_for_labels(labels_in(truth)) if regions is None else regions)
    for name, volume in (("truth", truth), ("pred", pred)):
        extra = _uncovered(volume, regions)
        if extra:
            hint = "; BraTS 2023 labels enhancing tumour 3: use BRATS_2023_REGIONS" if 3 in extra else ""
            raise InputError(f"{name}: labels {sorted(extra)} are in no region of {sorted(regions)}{hint}")
    far = empty_distance(empty_hd95, truth.shape, spacing)
    out = {}
    for name, labels in regions.items():
        p, t = _region_mask(pred, labels), _region_mask(truth, labels)
        values = segmentation.case_metrics(p, t, spacing, connectivity=connectivity)
        row = {k: float(values[src]) for k, src in _FROM_SEGMENTATION.items()}
        n_pred, n_truth = int(p.sum()), int(t.sum())
        if n_pred == 0 and n_truth == 0 and both_empty == "nan":
            row.update(dice=math.nan, iou=math.nan, hd95_mm=math.nan, assd_mm=math.nan)
        elif (n_pred == 0) != (n_truth == 0):
            row.update(hd95_mm=far, assd_mm=far)
        out[name] = {**row, "truth_voxels": n_truth, "pred_voxels": n_pred}
    return out


def _flat_rows(rows) -> list:
    """Rows as flat dicts with a 'region' key (from flat rows, or from `case_metrics`'s nested dicts)."""
    flat = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InputError(f"rows[{i}]: expected a mapping, got {type(row).__name__}")
        if "region" in row:
            flat.append(row)
        else:
            flat.extend({"region": region, **values} for region, values in row.items())
    return flat


def _statistics(values: Sequence[float]) -> dict:
    v = np.asarray(values, np.float64)
    f = v[np.isfinite(v)]
    if not f.size:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "q1": math.nan, "q3": math.nan,
                "n": 0, "undefined": int(v.size)}
    q1, median, q3 = np.percentile(f, [25, 50, 75])
    return {"mean": float(f.mean()), "std": float(f.std(ddof=1)) if f.size > 1 else math.nan,
            "median": float(median), "q1": float(q1), "q3": float(q3), "n": int(f.size),
            "undefined": int(v.size - f.size)}


def summarize_cases(rows, metrics: Sequence[str] = METRICS) -> dict:
    """Statistics over cases: {region: {metric: {mean, std, median, q1, q3, n, undefined}}}.

    rows: per-case results, each `case_metrics`'s {region: {metric: value}} or a flat row with a "region" key
    (as in per_case.csv). Values that are nan or inf (undefined cases) are left out: n counts the finite values,
    undefined the others. std is the sample standard deviation (ddof=1; nan for n < 2); q1, median, q3 are
    NumPy's linear-interpolation percentiles 25, 50, 75.
    """
    flat = _flat_rows(rows)
    regions = list(dict.fromkeys(r["region"] for r in flat))
    out = {}
    for region in regions:
        mine = [r for r in flat if r["region"] == region]
        out[region] = {m: _statistics([float(r.get(m, math.nan)) for r in mine]) for m in metrics}
    return out


def conventions(empty_hd95="diagonal", both_empty: str = "perfect", connectivity: int = 1) -> dict:
    """The conventions of `case_metrics` with these settings, as text for reports (name -> sentence)."""
    far = ("the volume's diagonal in mm (373.13 for 240x240x155 at 1 mm, as BraTS)" if empty_hd95 == "diagonal"
           else f"{float(empty_hd95)} mm")
    both = ("Dice = IoU = 1, HD95 = ASSD = 0 (BraTS)" if both_empty == "perfect"
            else "Dice, IoU, HD95, ASSD undefined (nan), left out of the statistics (nnU-Net v2 for Dice)")
    return {"regions": "per case in 3D; a region is the union of its labels (WT = 1,2,4; TC = 1,4; ET = 4 in "
                       "BraTS 2017-2021 labels)",
            "both_empty": both,
            "one_empty": f"Dice = IoU = 0, HD95 = ASSD = {far}",
            "sensitivity_specificity": "sensitivity undefined (nan) when the truth region is empty; "
                                       "specificity undefined when it fills the volume",
            "distances": f"mm from the voxel spacing; surface = mask minus its erosion (connectivity "
                         f"{connectivity}); HD95 = max of the two directed 95th percentiles, ASSD = mean of both "
                         "directions' distances pooled (MONAI)",
            "statistics": "over cases with a defined value (n); std with ddof=1; quartiles by linear "
                          "interpolation; 'undefined' counts nan/inf values"}
