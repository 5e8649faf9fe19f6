"""Segmentation evaluation as BraTS scores (`jaxdiff.tasks.seg_eval`, `python -m jaxdiff.evaluate`): whole held-out
cases in 3D per region with distances in mm, per_case.csv / evaluation.json / the table, `evaluate --input --truth`
on a folder of masks, and splits that never share a case.

Known values come from predictions constructed from the truth (the Predictor's `segment` replaced): every region is
a one-voxel-thick axial slab, so all its voxels are surface, and the prediction adds a copy of the slab two slices
up (z spacing 2.5 mm): Dice = 2/3, HD95 = 5 mm (half the prediction's surface is 5 mm from the truth, the rest 0),
ASSD = 5/3 mm. A wrong spacing axis (1.2 or 1.0 mm) or slice-wise scoring gives other numbers.
"""
from __future__ import annotations

import csv
import json
import os
import types

import jax
import ml_collections
import nibabel as nib
import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff import evaluate, inference, tasks
from jaxdiff.data import pipeline
from jaxdiff.metrics import regions as regions_lib
from jaxdiff.reporting import format_report
from jaxdiff.tasks import seg_eval

SHAPE, ZOOMS = (12, 10, 10), (1.0, 1.2, 2.5)
SLAB_Z, SHIFT = 3, 2                         # truth slab at z = 3, the prediction's copy at z = 5 (5 mm up)
N_CASES = 9


def _affine():
    return np.diag([*ZOOMS, 1.0])


def _truth(kind: int) -> np.ndarray:
    """Labels (X, Y, Z): kinds 0 and 1 a one-slice tumour at z = SLAB_Z (oedema 2 | necrosis 1 | enhancing 4 side by
    side in x), kind 2 no tumour."""
    seg = np.zeros(SHAPE, np.uint8)
    if kind != 2:
        seg[2:5, 2:8, SLAB_Z] = 2
        seg[5:8, 2:8, SLAB_Z] = 1
        seg[8:11, 2:8, SLAB_Z] = 4
    return seg


def _prediction(truth: np.ndarray, kind: int) -> np.ndarray:
    """Kind 0: the truth plus its copy SHIFT slices up; kind 1: the truth with ET (4) called necrosis (1);
    kind 2: the (empty) truth."""
    pred = truth.copy()
    if kind == 0:
        pred[:, :, SLAB_Z + SHIFT] = truth[:, :, SLAB_Z]
    elif kind == 1:
        pred[pred == 4] = 1
    return pred


def _write_cases(root) -> list:
    """A BraTS-layout folder of N_CASES cases (kind = index % 3); t2 = 10 * label + kind + 1, so a fake model can
    read the case's kind and truth from its image."""
    names = []
    for i in range(N_CASES):
        case, kind = f"BraTS20_Training_{i:03d}", i % 3
        (root / case).mkdir(parents=True)
        seg = _truth(kind)
        nib.save(nib.Nifti1Image(seg.astype(np.float32) * 10 + kind + 1, _affine()), str(root / case / f"{case}_t2.nii.gz"))
        nib.save(nib.Nifti1Image(seg, _affine()), str(root / case / f"{case}_seg.nii.gz"))
        names.append(case)
    return names


def _fake_segment(self, case, rng=None, progress=None):
    """`Predictor.segment` replaced: the truth read back from the t2 image, changed as `_prediction` says."""
    image = case["t2"]
    data = np.asarray(image.dataobj)
    kind = int(round(float(data[0, 0, 0]))) - 1
    pred = _prediction(np.rint((data - kind - 1) / 10).astype(np.uint8), kind)
    return {"mask": nib.Nifti1Image(pred, image.affine), "uncertainty": None}


def _config(root, **data):
    c = config_lib.load("configs/transformer_unet_tiny.py")
    c.data.update(dict(source="brats", root=str(root), modality="t2", image_size=16, clahe=False, augment=False,
                       fractions=(0.2, 0.6, 0.2), **data))
    c.eval.update(dict(num_cases=None, batch_size=4))
    if data.get("regions"):                 # three region outputs (WT, TC, ET)
        c.model.out_channels = 3
        if c.get("error_head") and c.error_head.get("name"):
            c.error_head.out_channels = 3
    return c


def _expected(kind: int, regions) -> dict:
    """{region: (dice, hd95_mm, assd_mm)} of a case of `kind`."""
    diagonal = regions_lib.diagonal_mm(SHAPE, ZOOMS)
    out = {}
    for region in regions:
        if kind == 0:
            out[region] = (2 / 3, SHIFT * ZOOMS[2], SHIFT * ZOOMS[2] / 3)
        elif kind == 1 and region == "ET":
            out[region] = (0.0, diagonal, diagonal)
        else:
            out[region] = (1.0, 0.0, 0.0)
    return out


def _rows(path) -> list:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("regions", [None, "brats"])
def test_constructed_predictions_give_known_dice_and_hd95_in_mm(tmp_path, monkeypatch, regions):
    names = _write_cases(tmp_path / "data")
    monkeypatch.setattr(inference.Predictor, "segment", _fake_segment)
    config = _config(tmp_path / "data", **({"regions": regions} if regions else {}))
    task = tasks.build(config)
    source = pipeline.get_source(config.data, "val")
    state = types.SimpleNamespace(variables=lambda ema: {})
    out_dir = tmp_path / "eval"
    report = task.evaluate(state, source, str(out_dir), jax.random.PRNGKey(0), split="val")

    table = ("WT", "TC", "ET") if regions else ("WT",)
    assert report["regions"] == list(table) and report["split"] == "val"
    assert report["num_cases"] == len(source.cases) and set(source.cases) <= set(names)
    assert {int(c[-3:]) % 3 for c in source.cases} == {0, 1, 2}          # every kind of case is in the split
    rows = _rows(out_dir / "per_case.csv")
    assert len(rows) == len(source.cases) * len(table)
    assert [(r["case"], r["region"]) for r in rows] == [(c, r) for c in source.cases for r in table]
    for row in rows:
        dice, hd95, assd = _expected(int(row["case"][-3:]) % 3, table)[row["region"]]
        assert float(row["dice"]) == pytest.approx(dice), row
        assert float(row["hd95_mm"]) == pytest.approx(hd95), row
        assert float(row["assd_mm"]) == pytest.approx(assd), row
    means = {r: np.mean([_expected(int(c[-3:]) % 3, table)[r][0] for c in source.cases]) for r in table}
    for r in table:
        assert report[f"dice_{r}"] == pytest.approx(means[r])
    ev = json.loads((out_dir / "evaluation.json").read_text())
    assert ev["split"] == "val" and ev["num_cases"] == len(source.cases) and ev["distance_unit"] == "mm"
    assert set(ev["metrics"]) == set(table) and ev["metrics"][table[0]]["dice"]["n"] == len(source.cases)
    assert "both_empty" in ev["conventions"] and "one_empty" in ev["conventions"]
    assert os.path.getsize(out_dir / "overlays.png") > 1000
    text = format_report(report, "evaluate w")
    assert f"scored on the val split ({len(source.cases)} cases, whole cases in 3D)" in text.splitlines()[0]
    assert "Dice WT" in text and "HD95 WT (mm)" in text and ("HD95 ET (mm)" in text) == bool(regions)


def test_num_cases_subsamples_cases_and_says_so(tmp_path, monkeypatch):
    _write_cases(tmp_path / "data")
    monkeypatch.setattr(inference.Predictor, "segment", _fake_segment)
    config = _config(tmp_path / "data")
    source = pipeline.get_source(config.data, "val")
    assert len(source.cases) >= 4
    report = tasks.build(config).evaluate(types.SimpleNamespace(variables=lambda ema: {}), source,
                                          str(tmp_path / "eval"), None, num=2, split="val")
    cases = {r["case"] for r in _rows(tmp_path / "eval" / "per_case.csv")}
    assert report["num_cases"] == 2 and cases == {source.cases[0], source.cases[-1]}
    assert f"2 of the split's {len(source.cases)} cases" in report["subsample"]
    assert report["subsample"] in format_report(report, "evaluate w")
    # the old key is read as a number of cases, with a note
    del config.eval["num_cases"]
    config.eval.num_examples = 3
    assert seg_eval.num_cases_setting(config) == (3, seg_eval.num_cases_setting(config)[1])
    assert "eval.num_examples" in seg_eval.num_cases_setting(config)[1]


def test_regions_for_run():
    c = ml_collections.ConfigDict(dict(data=dict(source="mask_folder")))
    assert seg_eval.regions_for_run(c, {0, 1}) == {"foreground": None}
    assert seg_eval.regions_for_run(c, {0, 1, 2, 4}) == {"WT": None}
    c.data.source = "phantom"
    assert seg_eval.regions_for_run(c, {0}) == {"WT": None}
    c.data.regions = "brats"
    assert seg_eval.regions_for_run(c, {0, 1}) == regions_lib.BRATS_REGIONS


def test_evaluate_cli_on_a_phantom_run_matches_predict(tmp_path, capsys):
    """`python -m jaxdiff.evaluate` on a step-0 S0 run of phantom T2 slices: every val case whole, the table names the
    split and the number of cases, and each case's predicted volume is what `jaxdiff.inference` (predict) gives."""
    from test_predict import _make_run
    workdir = _make_run(tmp_path / "run", "configs/transformer_unet_tiny.py",
                        data=dict(image_size=16, num_cases=12, clahe=False), eval=dict(batch_size=32))
    assert evaluate.main(["evaluate", "--workdir", workdir, "--split", "val"]) == 0
    out = capsys.readouterr().out
    predictor = inference.load_run(workdir)
    source = pipeline.get_source(predictor.config.data, "val")
    n = len(source.cases)
    assert out.splitlines()[0] == f"evaluate {workdir}, step 0: scored on the val split ({n} cases, whole cases in 3D)"
    assert "Dice WT" in out and "HD95 WT (mm)" in out
    out_dir = os.path.join(workdir, "eval_val")
    rows = _rows(os.path.join(out_dir, "per_case.csv"))
    assert [r["case"] for r in rows] == [f"phantom_{c:03d}" for c in source.cases]
    assert os.path.isfile(os.path.join(out_dir, "overlays.png"))
    case = next(source.case_volumes(source.cases[:1]))
    pred, _ = seg_eval.predict_case(predictor, case, jax.random.PRNGKey(0))
    assert pred.shape == case["seg"].shape == (96, 96, 88)
    assert int(rows[0]["pred_voxels"]) == int((pred > 0).sum())
    assert int(rows[0]["truth_voxels"]) == int((case["seg"] > 0).sum())


def test_image_sources_are_scored_per_image_in_pixels(tmp_path, monkeypatch):
    """A mask folder (2D images, no volumes): each image of the split is one case in 2D, distances in pixels, through
    `Predictor.segment_images` (the model replaced by a threshold of the image: its bright rectangle)."""
    from test_mask_folder import _make_folder
    root = _make_folder(tmp_path / "d", n=8, size=(16, 16))
    monkeypatch.setattr(inference.Predictor, "_run_batch",
                        lambda self, images, rng: {"prob": (images[..., :1] > 0.0).astype(np.float32)})
    config = config_lib.load("configs/transformer_unet_tiny.py")
    config.data.update(dict(source="mask_folder", root=str(root), image_size=16, clahe=False, augment=False,
                            fractions=(0.25, 0.5, 0.25)))
    source = pipeline.get_source(config.data, "val")
    report = tasks.build(config).evaluate(types.SimpleNamespace(variables=lambda ema: {}), source,
                                          str(tmp_path / "eval"), None, split="val")
    rows = _rows(tmp_path / "eval" / "per_case.csv")
    assert report["num_cases"] == len(source) == len(rows) >= 2 and report["regions"] == ["foreground"]
    assert "hd95_px" in rows[0] and "hd95_mm" not in rows[0] and report["scored_as"] == "each image one case in 2D"
    assert report["dice_foreground"] > 0.9 and report["hd95_px_foreground"] <= 1.0
    assert "HD95 foreground (px)" in format_report(report, "evaluate w")


def test_evaluate_input_truth_scores_a_folder_of_masks(tmp_path, capsys):
    pred_dir, truth_dir = tmp_path / "preds", tmp_path / "truths"
    pred_dir.mkdir()
    truth_dir.mkdir()
    for kind in (0, 1, 2):
        truth = _truth(kind)
        nib.save(nib.Nifti1Image(_prediction(truth, kind), _affine()), str(pred_dir / f"case{kind}.nii.gz"))
        nib.save(nib.Nifti1Image(truth, _affine()), str(truth_dir / f"case{kind}.nii.gz"))
    assert evaluate.main(["evaluate", "--input", str(pred_dir), "--truth", str(truth_dir)]) == 0
    out = capsys.readouterr().out
    scores = tmp_path / "preds_scores"
    assert out.startswith("3 cases, predictions") and "WT: dice" in out and str(scores / "per_case.csv") in out
    rows = _rows(scores / "per_case.csv")
    assert len(rows) == 9 and {r["region"] for r in rows} == {"WT", "TC", "ET"}
    row = next(r for r in rows if r["case"] == "case0" and r["region"] == "TC")
    assert float(row["dice"]) == pytest.approx(2 / 3) and float(row["hd95_mm"]) == pytest.approx(5.0)
    assert json.loads((scores / "summary.json").read_text())["num_cases"] == 3
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["evaluate", "--input", str(pred_dir)])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: --truth")


# ---------------------------------------------------------------------------------------------------------------
# Splits by case, never by slice
# ---------------------------------------------------------------------------------------------------------------
def _brats_layout(root):
    for i in range(10):
        case = f"BraTS20_Training_{i:03d}"
        (root / case).mkdir(parents=True)
        for name in ("t2", "seg"):
            nib.save(nib.Nifti1Image(np.full((8, 8, 4), i, np.float32 if name == "t2" else np.uint8), np.eye(4)),
                     str(root / case / f"{case}_{name}.nii.gz"))


def _lgg_layout(root):
    import tifffile
    for p in range(6):
        patient = f"TCGA_CS_{4941 + p}_19960909"
        (root / patient).mkdir(parents=True)
        for n in (1, 2, 3):
            tifffile.imwrite(root / patient / f"{patient}_{n}.tif", np.full((8, 8, 3), 10 * p, np.uint8))
            tifffile.imwrite(root / patient / f"{patient}_{n}_mask.tif", np.zeros((8, 8), np.uint8))


def _ixi_layout(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    for n in range(8):
        nib.save(nib.Nifti1Image(rng.random((6, 6, 6)).astype(np.float32) + 1, np.eye(4)),
                 str(root / f"IXI{n:03d}-Guys-{n:04d}-T1.nii.gz"))


def _mrnet_layout(root):
    for folder, exams in (("train", (0, 1, 2, 3)), ("valid", (1130, 1131))):
        (root / folder / "coronal").mkdir(parents=True)
        for e in exams:
            np.save(root / folder / "coronal" / f"{e:04d}.npy", np.arange(7 * 64, dtype=np.uint8).reshape(7, 8, 8))
        for label in ("abnormal", "acl"):
            (root / f"{folder}-{label}.csv").write_text("".join(f"{e:04d},{e % 2}\n" for e in exams))


def _mask_folder_layout(root):
    from PIL import Image
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(10):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"im{i}.png")


SPLIT_SOURCES = {
    "phantom": (None, dict(image_size=8, num_cases=20, slices_per_case=2)),
    "phantom3d": (None, dict(image_size=4, num_cases=20)),
    "brats": (_brats_layout, dict(modality="t2", image_size=8)),
    "lgg": (_lgg_layout, dict(image_size=8)),
    "ixi": (_ixi_layout, dict(image_size=(4, 4, 4), spacing=1.0)),
    "mrnet": (_mrnet_layout, dict(image_size=8)),
    "mask_folder": (_mask_folder_layout, dict(image_size=8)),
}


@pytest.mark.parametrize("name", sorted(SPLIT_SOURCES))
def test_splits_never_share_a_case(tmp_path, name):
    """Every source with cases splits them whole: the train, val and test splits hold no case in common (phantom
    case index, BraTS / IXI case, LGG patient, MRNet exam, mask-folder image)."""
    layout, data = SPLIT_SOURCES[name]
    config = ml_collections.ConfigDict(dict(source=name, seed=0, **data))
    if layout is not None:
        layout(tmp_path / "root")
        config.root = str(tmp_path / "root")
    cases = {}
    for split in ("train", "val", "test"):
        source = pipeline.get_source(config, split)
        cases[split] = {int(source[i].get("case", source[i].get("exam"))) for i in range(len(source))}
    assert cases["train"] and (cases["val"] or cases["test"])
    assert not cases["train"] & cases["val"] and not cases["train"] & cases["test"]
    if name != "mrnet":                     # MRNet has no test split of its own: val and test are its valid/ folder
        assert not cases["val"] & cases["test"]
    if name in ("phantom", "brats"):        # the whole cases that evaluation scores are the split's own
        for split in ("val", "test"):
            source = pipeline.get_source(config, split)
            assert len(list(source.case_volumes())) == len(source.cases) == len(cases[split])
