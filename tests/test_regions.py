"""Per-region 3D case metrics (jaxdiff.metrics.regions) and folder scoring (jaxdiff.scoring).

Hand-derived values on constructed volumes, the empty-case conventions, MONAI's metrics as an independent
reference on random volumes with anisotropic spacing, and score_folders on NIfTI files in the BraTS layout.
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from jaxdiff import reporting, scoring
from jaxdiff.errors import InputError
from jaxdiff.metrics import regions as R


def box(shape, lo, hi, value=1, dtype=np.uint8):
    v = np.zeros(shape, dtype)
    v[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return v


def nested_brats(shape=(16, 16, 16)):
    """Truth with 1 inside 4 inside 2: label 2 on [4,12)^3 (512 voxels), 4 on [5,11)^3 (216), 1 on [6,10)^3 (64)."""
    t = box(shape, (4,) * 3, (12,) * 3, 2)
    t[5:11, 5:11, 5:11] = 4
    t[6:10, 6:10, 6:10] = 1
    return t


# ----------------------------------------------------------------------------------------------- hand values

@pytest.mark.parametrize("axis,hd95,assd", [
    # Truth: a 6^3 cube; prediction: the same cube shifted by k = 2 voxels along `axis`; spacing (3, 1, 1) mm.
    # Overlap: (6-2)*36 voxels, so Dice = 2*4*36 / (2*216) = 4/6, IoU = 4*36 / (8*36) = 1/2, sensitivity = 4/6.
    # Surfaces (mask minus its erosion) are the cubes' shells, 6^3 - 4^3 = 152 voxels each. Directed distances of
    # the predicted shell, counted slice by slice along the shift (the truth's are the same by symmetry):
    #  - the 4 slices inside the truth's extent: their 4 * 20 rim voxels lie on the truth's rim -> 0 (80 voxels);
    #    the 4x4 inside of the first slice (a face) is 1 or 2 voxels from the truth's rim across the other axes
    #    (1 mm voxels) -> 12 x 1 mm and 4 x 2 mm when shifting along axis 0; shifting along axis 2 the other axes are
    #    3 mm and 1 mm, so the nearest rim is along the 1 mm axis: 8 x 1 mm and 8 x 2 mm.
    #  - the rim of the first slice beyond the truth: 1 step along the shift axis -> 20 x (1 * spacing[axis]);
    #  - the last face, 36 voxels, 2 steps -> 36 x (2 * spacing[axis]).
    # HD95: np.percentile's index 0.95 * 151 = 143.45 falls among the 36 largest (sorted 116..151) -> 2*spacing.
    # axis 0 (3 mm): HD95 = 6 mm, ASSD = (12*1 + 4*2 + 20*3 + 36*6) / 152 = 296/152
    # axis 2 (1 mm): HD95 = 2 mm, ASSD = (8*1 + 8*2 + 20*1 + 36*2) / 152 = 116/152
    (0, 6.0, 296 / 152), (2, 2.0, 116 / 152)])
def test_shifted_cube_anisotropic(axis, hd95, assd):
    shape, spacing = (14, 14, 14), (3.0, 1.0, 1.0)
    truth = box(shape, (4, 4, 4), (10, 10, 10))
    pred = np.roll(truth, 2, axis=axis)
    m = R.case_metrics(pred, truth, spacing, R.FOREGROUND)["foreground"]
    assert m["dice"] == pytest.approx(2 / 3, abs=1e-12) and m["iou"] == pytest.approx(0.5, abs=1e-12)
    assert m["sensitivity"] == pytest.approx(2 / 3, abs=1e-12)
    n = 14 ** 3  # specificity = tn / (tn + fp), fp = 2 * 36
    assert m["specificity"] == pytest.approx((n - 216 - 72) / (n - 216), abs=1e-12)
    assert m["hd95_mm"] == pytest.approx(hd95, abs=1e-12)
    assert m["assd_mm"] == pytest.approx(assd, abs=1e-12)
    assert m["truth_voxels"] == m["pred_voxels"] == 216


def test_nested_brats_regions():
    truth = nested_brats()
    # Prediction: the whole tumour right, but labelled 2 except the inner [6,10)^3 cube labelled 4 (no label 1).
    pred = box(truth.shape, (4,) * 3, (12,) * 3, 2)
    pred[6:10, 6:10, 6:10] = 4
    m = R.case_metrics(pred, truth, (1.0, 1.0, 1.0), R.BRATS_REGIONS)
    assert list(m) == ["WT", "TC", "ET"]
    # WT: labels {1,2,4}: both are the [4,12)^3 cube -> Dice 1, HD95 0.
    assert m["WT"]["dice"] == 1.0 and m["WT"]["hd95_mm"] == 0.0 and m["WT"]["truth_voxels"] == 512
    # TC: labels {1,4}: truth [5,11)^3 = 216 voxels, prediction the inner 64 inside it -> Dice 2*64/280 = 16/35,
    # IoU 64/216, sensitivity 64/216.
    assert m["TC"]["dice"] == pytest.approx(16 / 35, abs=1e-12)
    assert m["TC"]["iou"] == pytest.approx(64 / 216, abs=1e-12)
    assert m["TC"]["sensitivity"] == pytest.approx(64 / 216, abs=1e-12)
    assert (m["TC"]["truth_voxels"], m["TC"]["pred_voxels"]) == (216, 64)
    # ET: label 4: truth is the 152-voxel shell [5,11)^3 minus [6,10)^3, prediction the inner 64: disjoint -> 0.
    assert m["ET"]["dice"] == 0.0 and m["ET"]["iou"] == 0.0
    assert (m["ET"]["truth_voxels"], m["ET"]["pred_voxels"]) == (152, 64)
    # regions=None picks the BraTS table from the truth's labels {0, 1, 2, 4}
    assert R.case_metrics(pred, truth, (1.0, 1.0, 1.0)) == m


def test_empty_case_conventions():
    shape, spacing = (16, 16, 16), (3.0, 1.0, 1.0)
    truth = nested_brats(shape)
    no_et = np.where(truth == 4, 1, truth)  # labels 1 and 2 only
    # truth and prediction without ET: both empty -> Dice = IoU = 1, HD95 = ASSD = 0 (BraTS)
    et = R.case_metrics(no_et, no_et, spacing, R.BRATS_REGIONS)["ET"]
    assert (et["dice"], et["iou"], et["hd95_mm"], et["assd_mm"]) == (1.0, 1.0, 0.0, 0.0)
    assert math.isnan(et["sensitivity"]) and et["specificity"] == 1.0
    # nnU-Net v2: Dice undefined (nan) when both are empty
    et = R.case_metrics(no_et, no_et, spacing, R.BRATS_REGIONS, both_empty="nan")["ET"]
    assert all(math.isnan(et[k]) for k in ("dice", "iou", "hd95_mm", "assd_mm"))
    # truth has ET, prediction none: Dice 0 and HD95 = ASSD = the volume's diagonal, sqrt(48^2 + 16^2 + 16^2) mm
    et = R.case_metrics(no_et, truth, spacing, R.BRATS_REGIONS)["ET"]
    assert et["dice"] == 0.0 and et["sensitivity"] == 0.0
    assert et["hd95_mm"] == et["assd_mm"] == pytest.approx(math.sqrt(48 ** 2 + 2 * 16 ** 2), abs=1e-12)
    # ... and the other way round, with a stated number
    et = R.case_metrics(truth, no_et, spacing, R.BRATS_REGIONS, empty_hd95=373.13)["ET"]
    assert et["dice"] == 0.0 and et["hd95_mm"] == et["assd_mm"] == 373.13 and math.isnan(et["sensitivity"])
    # BraTS's value: the diagonal of 240 x 240 x 155 at 1 mm
    assert R.diagonal_mm((240, 240, 155), (1, 1, 1)) == pytest.approx(373.12866, abs=1e-5)
    with pytest.raises(InputError, match="empty_hd95"):
        R.case_metrics(truth, truth, spacing, empty_hd95="max")


def test_region_tables_and_label_checks():
    assert R.regions_for_labels([0, 1, 2, 4]) == R.BRATS_REGIONS
    assert R.regions_for_labels({0, 2, 4}) == R.BRATS_REGIONS
    assert R.regions_for_labels([0, 1]) == R.FOREGROUND
    assert R.regions_for_labels([0, 2]) == R.FOREGROUND  # one foreground label: not enough to call it BraTS
    assert R.regions_for_labels([0, 1, 2, 3]) == R.FOREGROUND  # BraTS 2023 labels are not guessed
    truth = nested_brats()
    labels_2023 = np.where(truth == 4, 3, truth)
    with pytest.raises(InputError, match=r"truth: labels \[3\] .*BRATS_2023_REGIONS"):
        R.case_metrics(labels_2023, labels_2023, None, R.BRATS_REGIONS)
    with pytest.raises(InputError, match=r"pred: labels \[3\]"):
        R.case_metrics(labels_2023, truth, None, R.BRATS_REGIONS)
    assert R.case_metrics(labels_2023, labels_2023, None, R.BRATS_2023_REGIONS)["ET"]["truth_voxels"] == 152
    # foreground counts every label > 0; integral floats and bools are labels too
    fg = R.case_metrics(truth.astype(np.float32), truth > 0, None, R.FOREGROUND)["foreground"]
    assert fg["dice"] == 1.0 and fg["truth_voxels"] == 512
    with pytest.raises(InputError, match="non-integer"):
        R.case_metrics(truth + 0.5, truth, None)
    with pytest.raises(InputError, match="shapes"):
        R.case_metrics(truth[:-1], truth, None)


def test_summarize_cases():
    rows = [{"case": "a", "region": "WT", "dice": 0.5, "hd95_mm": 2.0},
            {"case": "b", "region": "WT", "dice": 1.0, "hd95_mm": math.inf},
            {"case": "c", "region": "WT", "dice": math.nan, "hd95_mm": 4.0},
            {"case": "d", "region": "WT", "dice": 0.0, "hd95_mm": 6.0}]
    s = R.summarize_cases(rows, metrics=("dice", "hd95_mm"))["WT"]
    # dice over the defined 0.5, 1.0, 0.0: mean 0.5, sample std 0.5, quartiles (linear) 0.25, 0.5, 0.75
    assert s["dice"] == {"mean": 0.5, "std": 0.5, "median": 0.5, "q1": 0.25, "q3": 0.75, "n": 3, "undefined": 1}
    assert s["hd95_mm"]["mean"] == 4.0 and s["hd95_mm"]["n"] == 3 and s["hd95_mm"]["undefined"] == 1
    # case_metrics' nested dicts summarize the same as flat rows
    m = R.case_metrics(nested_brats(), nested_brats(), None)
    nested, flat = R.summarize_cases([m, m]), R.summarize_cases([{"region": k, **v} for k, v in m.items()] * 2)
    assert nested == flat and nested["TC"]["dice"]["mean"] == 1.0 and nested["TC"]["dice"]["n"] == 2


# ------------------------------------------------------------------------------------- MONAI as a reference

def blob(rng, shape, sigma=1.5):
    m = ndimage.gaussian_filter(rng.standard_normal(shape), sigma) > 0.15
    assert m.any() and not m.all()
    return m


def test_matches_monai_anisotropic():
    """hd95_mm, assd_mm and Dice equal MONAI's on random blobs with anisotropic voxels.

    MONAI's surfaces are the mask minus its scipy erosion with the default (face-connected) structure and its
    distances are Euclidean in mm with the spacing, as ours with connectivity=1 (the default of case_metrics).
    MONAI keeps distances in float32, hence rel 1e-6. With full connectivity (the erosion segmentation.py uses
    by default) the surfaces hold more voxels and the values differ.
    """
    import monai.metrics as monai_metrics  # requirements-test.txt: the independent reference
    import torch
    rng = np.random.default_rng(33)
    shape = (20, 26, 22)
    differs = 0
    for spacing in [(3.0, 1.0, 1.0), (0.8, 1.25, 2.5), (1.0, 0.5, 1.7)]:
        for _ in range(2):
            p, t = blob(rng, shape), blob(rng, shape)
            onehot = [torch.from_numpy(np.stack([~m, m])[None].astype(np.float32)) for m in (p, t)]
            hd = monai_metrics.compute_hausdorff_distance(*onehot, include_background=False, percentile=95,
                                                          spacing=spacing).item()
            asd = monai_metrics.compute_average_surface_distance(*onehot, include_background=False,
                                                                 symmetric=True, spacing=spacing).item()
            dice = monai_metrics.compute_dice(*onehot, include_background=False).item()
            ours = R.case_metrics(p.astype(np.uint8), t.astype(np.uint8), spacing, R.FOREGROUND)["foreground"]
            assert ours["hd95_mm"] == pytest.approx(hd, rel=1e-6)
            assert ours["assd_mm"] == pytest.approx(asd, rel=1e-6)
            assert ours["dice"] == pytest.approx(dice, rel=1e-6)
            full = R.case_metrics(p, t, spacing, R.FOREGROUND, connectivity=3)["foreground"]
            differs += full["assd_mm"] != pytest.approx(asd, rel=1e-6)
    assert differs == 6


# ------------------------------------------------------------------------------------------- score_folders

AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])  # zooms (1, 1, 3) mm


def save(path, data, affine=AFFINE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.uint8), affine), path)


def brats_folders(root, cases):
    """Truths in the BraTS layout (with a modality file beside each), predictions flat as nnU-Net writes them."""
    truth_dir, pred_dir = os.path.join(root, "truth"), os.path.join(root, "pred")
    for name, (pred, truth) in cases.items():
        save(os.path.join(truth_dir, name, f"{name}_seg.nii.gz"), truth)
        save(os.path.join(truth_dir, name, f"{name}_flair.nii.gz"), truth * 100)
        save(os.path.join(pred_dir, f"{name}.nii.gz"), pred)
    return pred_dir, truth_dir


def test_score_folders(tmp_path):
    shape = (16, 16, 16)
    truth = nested_brats(shape)
    shifted = np.roll(truth, 1, axis=2)  # one slice along the 3 mm axis
    edema = np.where(truth > 0, 2, 0).astype(np.uint8)
    cases = {"BraTS_001": (truth, truth), "BraTS_002": (shifted, truth), "BraTS_003": (edema, edema)}
    pred_dir, truth_dir = brats_folders(str(tmp_path), cases)
    out = tmp_path / "scores"
    summary = scoring.score_folders(pred_dir, truth_dir, str(out), workers=1, progress=False)
    assert summary["num_cases"] == 3 and summary["regions"] == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["region"]) for r in rows] == [(c, g) for c in cases for g in ("WT", "TC", "ET")]
    assert list(rows[0]) == list(scoring.COLUMNS)
    for r in rows:  # each row is case_metrics of the arrays with the header's spacing (1, 1, 3)
        pred, tr = cases[r["case"]]
        want = R.case_metrics(pred, tr, (1.0, 1.0, 3.0), R.BRATS_REGIONS)[r["region"]]
        for k in R.METRICS + R.COUNTS:
            assert float(r[k]) == pytest.approx(want[k], abs=1e-12, nan_ok=True), (r["case"], r["region"], k)
    et3 = rows[-1]  # BraTS_003 has no TC/ET in truth or prediction: the BraTS convention, stated in the summary
    assert (float(et3["dice"]), float(et3["hd95_mm"]), et3["sensitivity"]) == (1.0, 0.0, "nan")
    # BraTS_003's own labels {0, 2} would give one foreground region: it was rescored with the dataset's table
    wt = [R.case_metrics(*cases[c], (1.0, 1.0, 3.0), R.BRATS_REGIONS)["WT"]["hd95_mm"] for c in cases]
    assert summary["metrics"]["WT"]["hd95_mm"]["mean"] == pytest.approx(np.mean(wt), abs=1e-12)
    assert wt[1] == 3.0  # the shifted case: one 3 mm step
    sens = summary["metrics"]["ET"]["sensitivity"]
    assert sens["n"] == 2 and sens["undefined"] == 1
    saved = json.loads((out / "summary.json").read_text())
    assert saved["metrics"]["TC"]["dice"]["median"] == summary["metrics"]["TC"]["dice"]["median"]
    assert "373.13" in saved["conventions"]["one_empty"] and "Dice = IoU = 1" in saved["conventions"]["both_empty"]
    assert "3 cases" in reporting.summary_table(summary).splitlines()[0]
    # the same scores from a pool of processes
    pooled = scoring.score_folders(pred_dir, truth_dir, None, workers=2, progress=False)
    assert pooled["metrics"] == summary["metrics"]


def test_score_folders_errors(tmp_path):
    truth = nested_brats((12, 12, 8))
    pred_dir, truth_dir = brats_folders(str(tmp_path), {"a": (truth, truth), "b": (truth, truth)})
    out = tmp_path / "scores"
    # a prediction of another shape: one line naming the file, nothing written
    save(os.path.join(pred_dir, "b.nii.gz"), truth[:, :, :-1])
    with pytest.raises(InputError, match=r"pred/b\.nii\.gz: shape \(12, 12, 7\) differs"):
        scoring.score_folders(pred_dir, truth_dir, str(out), workers=1, progress=False)
    assert not out.exists()
    # ... or another affine
    save(os.path.join(pred_dir, "b.nii.gz"), truth, np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(InputError, match=r"pred/b\.nii\.gz: affine differs"):
        scoring.score_folders(pred_dir, truth_dir, str(out), workers=1, progress=False)
    save(os.path.join(pred_dir, "b.nii.gz"), truth)
    # an unpaired prediction and a truth without prediction: one error naming both, or skipped with a warning
    save(os.path.join(pred_dir, "c_seg.nii.gz"), truth)
    os.remove(os.path.join(pred_dir, "a.nii.gz"))
    with pytest.raises(InputError, match=r"unpaired cases: no prediction in .* for a; no truth in .* for c"):
        scoring.score_folders(pred_dir, truth_dir, str(out), workers=1, progress=False)
    with pytest.warns(UserWarning, match="no truth in .* for c"):
        s = scoring.score_folders(pred_dir, truth_dir, str(out), workers=1, progress=False, unpaired="skip")
    assert s["num_cases"] == 1 and s["skipped"] == {"no_prediction": ["a"], "no_truth": ["c"]}
    # a file that is not NIfTI
    with open(os.path.join(pred_dir, "b.nii.gz"), "wb") as f:
        f.write(b"not a nifti")
    with pytest.raises(InputError, match=r"pred/b\.nii\.gz: cannot read"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scoring.score_folders(pred_dir, truth_dir, None, workers=1, progress=False, unpaired="skip")
    with pytest.raises(InputError, match="no NIfTI masks"):
        scoring.score_folders(str(tmp_path / "scores"), truth_dir, None, progress=False)
