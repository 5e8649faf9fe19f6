"""`python -m jaxdiff.predict` and `jaxdiff.inference`: volumes in the BraTS layout, a single NIfTI stored in LPS,
anisotropic voxels, a corrupt file among good ones, MedSegDiff's uncertainty volume, PNG masks on the images' own
sizes, and a classifier's CSV.

The work directories are tiny configs with freshly initialised weights saved as a step-0 checkpoint (restored
through the same `load_for_inference` as a trained run): what is tested is geometry and files, not accuracy. The
geometry tests replace the model by a deterministic threshold of the image (`Predictor._run_batch`).
"""
from __future__ import annotations

import csv
import json
import os

import jax
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from jaxdiff import config as config_lib
from jaxdiff import inference, predict

SHAPE, ZOOMS = (40, 48, 20), (1.0, 1.0, 2.5)


def _make_run(workdir, config_file: str, **updates) -> str:
    """A work directory of `config_file` (blocks updated by `updates`, e.g. data={...}): config.json and a step-0
    checkpoint of freshly initialised weights."""
    from jaxdiff import tasks
    from jaxdiff.io import files
    from jaxdiff.training.checkpoint import Checkpointer
    from jaxdiff.training.state import TrainState, make_optimizer
    config = config_lib.load(config_file)
    for block, values in updates.items():
        config[block].update(values)
    task = tasks.build(config)
    state = TrainState.create(task.init(jax.random.PRNGKey(0), task.example_batch(1)), make_optimizer(config.train))
    files.write_text(os.path.join(workdir, "config.json"), config_lib.to_json(config))
    ckpt = Checkpointer(str(workdir), every=1, keep=1, async_save=False)
    ckpt.save(0, state, force=True)
    ckpt.close()
    return str(workdir)


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Work directories: S0 segmenter (phantom T2, 32x32 slices, CLAHE), MedSegDiff (T1 / FLAIR / T1ce, 16x16,
    ensemble 2, 2 DDIM steps) and the tiny classifier (32x32)."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "seg": _make_run(root / "seg", "configs/transformer_unet_tiny.py", data=dict(image_size=32),
                         eval=dict(batch_size=8)),
        "msd": _make_run(root / "msd", "configs/medsegdiff_tiny.py", data=dict(image_size=16),
                         model=dict(image_size=16), diffusion=dict(ensemble=2, sample_steps=2),
                         eval=dict(batch_size=8)),
        "cls": _make_run(root / "cls", "configs/classifier_tiny.py", data=dict(image_size=32),
                         eval=dict(batch_size=4)),
    }


def _affine(zooms=ZOOMS, shape=SHAPE) -> np.ndarray:
    """RAS affine with `zooms` mm voxels, centred."""
    a = np.diag([*zooms, 1.0])
    a[:3, 3] = -np.asarray(zooms) * (np.asarray(shape) - 1) / 2
    return a


def _scan(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(volume float32 (40, 48, 20) in RAS, bright off-centre ellipsoid on a dimmer background; blob mask)."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    blob = ((x - 26) / 8) ** 2 + ((y - 18) / 10) ** 2 + ((z - 11) / 4) ** 2 < 1
    head = ((x - 20) / 18) ** 2 + ((y - 24) / 22) ** 2 + ((z - 10) / 9) ** 2 < 1
    rng = np.random.default_rng(seed)
    vol = 0.4 * head + 0.6 * blob + rng.uniform(0, 0.02, SHAPE)
    return vol.astype(np.float32), blob


def _lps(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same scan stored in LPS voxel order (first two axes flipped, affine to match)."""
    flip = nib.orientations.inv_ornt_aff(np.array([[0, -1], [1, -1], [2, 1]]), img.shape)
    return nib.Nifti1Image(np.asarray(img.dataobj)[::-1, ::-1].copy(), img.affine @ flip)


def _write_brats(root, cases, modalities, seg: bool = True) -> None:
    """`<root>/<case>/<case>_<modality>.nii.gz` (and `_seg`) on the anisotropic RAS grid."""
    for i, case in enumerate(cases):
        vol, blob = _scan(i)
        (root / case).mkdir(parents=True, exist_ok=True)
        for m in modalities:
            nib.save(nib.Nifti1Image(vol * (1 + 0.1 * len(m)), _affine()), str(root / case / f"{case}_{m}.nii.gz"))
        if seg:
            nib.save(nib.Nifti1Image(blob.astype(np.uint8), _affine()), str(root / case / f"{case}_seg.nii.gz"))


def _threshold_model(predictor):
    """Replace the model by p = (first channel > 0), the normalised image's bright blob (CLAHE off)."""
    predictor.config.data.clahe = False
    predictor._run_batch = lambda images, rng: {"prob": (images[..., :1] > 0.0).astype(np.float32)}
    return predictor


def _dice(a, b) -> float:
    return 2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1)


def test_slices_round_trip_exact():
    """`slices_to_volume` inverts `axial_slices`' rot90 and square padding exactly (no zoom at S = max side)."""
    from jaxdiff.data.sources import axial_slices
    v = np.random.default_rng(0).uniform(-1, 1, (6, 9, 3)).astype(np.float32)
    images, _ = axial_slices([v], np.zeros(v.shape), range(3), 9)
    np.testing.assert_array_equal(inference.slices_to_volume(images, v.shape[:2])[..., 0], v)


def test_training_geometry():
    from jaxdiff.data.sources.phantom import DEFAULT_VOXEL_MM
    assert inference.training_geometry({"source": "brats"}) == 1.0
    assert inference.training_geometry({"source": "phantom"}) == DEFAULT_VOXEL_MM
    assert inference.training_geometry({"source": "ixi", "spacing": (1.5, 1.5, 2.0)}) == (1.5, 1.5, 2.0)
    assert inference.training_geometry({"source": "mask_folder"}) is None


def test_lps_input_gives_the_ras_mask_reoriented(runs):
    """With the model replaced by a threshold of the image, a scan stored in LPS (anisotropic 1 x 1 x 2.5 mm voxels,
    resampled to the phantom's 2 mm and back) gets exactly the mask of the same scan stored in RAS, flipped back:
    the geometry is undone exactly; and the mask matches the blob the threshold sees (rot90, padding, zooms and
    resampling undone in place)."""
    predictor = _threshold_model(inference.load_run(runs["seg"]))
    vol, blob = _scan()
    ras = nib.Nifti1Image(vol, _affine())
    lps = _lps(ras)
    mask_ras, mask_lps = predictor.segment_volume(ras), predictor.segment_volume(lps)
    assert mask_lps.shape == SHAPE and np.allclose(mask_lps.affine, lps.affine)
    assert np.asarray(mask_lps.dataobj).dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(mask_lps.dataobj), np.asarray(mask_ras.dataobj)[::-1, ::-1])
    np.testing.assert_array_equal(np.asarray(nib.as_closest_canonical(mask_lps).dataobj), np.asarray(mask_ras.dataobj))
    assert _dice(np.asarray(mask_ras.dataobj) > 0, blob) > 0.9


def test_cli_brats_folder_lps_file_and_corrupt_file(runs, tmp_path, capsys):
    """BraTS-layout folder (t1/t2/seg files, the model takes t2), an LPS file among plain files and a corrupt
    file: masks with the inputs' shapes and affines, labels in {0, 1}; the corrupt one named in one error line,
    exit status 1, the others written."""
    brats = tmp_path / "brats"
    _write_brats(brats, ["BraTS_001", "BraTS_002"], ("t1", "t2"))
    out = tmp_path / "out"
    assert predict.main(["predict", "--workdir", runs["seg"], "--input", str(brats), "--output", str(out)]) == 0
    for case in ("BraTS_001", "BraTS_002"):
        ref = nib.load(str(brats / case / f"{case}_t2.nii.gz"))
        mask = nib.load(str(out / f"{case}.nii.gz"))
        assert mask.shape == ref.shape and np.allclose(mask.affine, ref.affine)
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote 2 cases to {out}, 0 failed"

    flat = tmp_path / "flat"
    flat.mkdir()
    lps = _lps(nib.Nifti1Image(_scan()[0], _affine()))
    nib.save(lps, str(flat / "scan_lps.nii.gz"))
    (flat / "broken.nii.gz").write_bytes(b"\x1f\x8b not a nifti")
    out2 = tmp_path / "out2"
    assert predict.main(["predict", "--workdir", runs["seg"], "--input", str(flat), "--output", str(out2)]) == 1
    cap = capsys.readouterr()
    mask = nib.load(str(out2 / "scan_lps.nii.gz"))
    assert mask.shape == SHAPE and np.allclose(mask.affine, lps.affine)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.nii.gz" in errors[0], cap.err
    assert cap.out.strip().splitlines()[-1] == f"wrote 1 cases to {out2}, 1 failed"
    assert sorted(os.listdir(out2)) == ["scan_lps.nii.gz"]


def test_cli_refusals_exit_2(runs, tmp_path, capsys):
    """A generation run, a missing --input, and a three-modality model given a file without a modality suffix:
    one error line, exit 2, nothing written."""
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "config.json").write_text('{"task": "generation"}')
    out = tmp_path / "out"
    for argv in (["--workdir", str(gen), "--input", str(tmp_path), "--output", str(out)],
                 ["--workdir", runs["seg"], "--output", str(out)]):
        with pytest.raises(SystemExit) as e:
            predict.main(["predict", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
    vol = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(_scan()[0], _affine()), str(vol))
    with pytest.raises(SystemExit) as e:
        predict.main(["predict", "--workdir", runs["msd"], "--input", str(vol), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "t1, flair, t1ce" in err[0], err
    assert not out.exists()


def test_medsegdiff_writes_uncertainty(runs, tmp_path, capsys):
    """MedSegDiff on a BraTS case with its three modalities: the mask and a float32 variance volume on the input's
    grid; a case missing a modality is reported by name."""
    brats = tmp_path / "brats"
    _write_brats(brats, ["c1"], ("t1", "t1ce", "t2", "flair"))
    _write_brats(brats, ["c2"], ("t1", "t2"), seg=False)
    out = tmp_path / "out"
    assert predict.main(["predict", "--workdir", runs["msd"], "--input", str(brats), "--output", str(out),
                         "--batch_size", "8"]) == 1
    cap = capsys.readouterr()
    err = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "c2" in err[0] and "flair" in err[0], err
    ref = nib.load(str(brats / "c1" / "c1_t1.nii.gz"))
    mask, unc = nib.load(str(out / "c1.nii.gz")), nib.load(str(out / "c1_uncertainty.nii.gz"))
    for img in (mask, unc):
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}
    var = np.asarray(unc.dataobj)
    assert var.dtype == np.float32 and var.min() >= 0 and var.max() > 0


def test_png_folder_masks_on_own_sizes(runs, tmp_path):
    """PNG images of two sizes (LGG-style patient folder, one `_mask` file skipped) give 0/255 PNG masks of the
    images' own sizes; a mask-folder run (no square padding) as well."""
    folder = tmp_path / "imgs" / "TCGA_A"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"a": (50, 70), "b": (64, 40)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(folder / f"{name}.png")
    Image.fromarray(np.zeros((50, 70), np.uint8)).save(folder / "a_mask.png")
    out = tmp_path / "out"
    assert predict.main(["predict", "--workdir", runs["seg"], "--input", str(tmp_path / "imgs"),
                         "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["a_mask.png", "b_mask.png"]
    for name, size in sizes.items():
        m = np.asarray(Image.open(out / f"{name}_mask.png"))
        assert m.shape == size and set(np.unique(m).tolist()) <= {0, 255}

    predictor = _threshold_model(inference.load_run(runs["seg"]))
    predictor.config.data.source = "mask_folder"
    image = np.zeros((30, 45), np.uint8)
    image[5:15, 10:30] = 255
    Image.fromarray(image).save(tmp_path / "box.png")
    [(_, labels, _)] = predictor.segment_files([str(tmp_path / "box.png")])
    assert labels.shape == (30, 45) and _dice(labels > 0, image > 0) > 0.9


def test_classifier_csv(runs, tmp_path):
    """A classifier run on a folder of images: predictions.csv with a row per image, the predicted class and one
    probability column per class summing to 1."""
    rng = np.random.default_rng(1)
    for name in ("x", "y", "z"):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(tmp_path / f"{name}.jpg")
    out = tmp_path / "out"
    assert predict.main(["predict", "--workdir", runs["cls"], "--input", str(tmp_path), "--output", str(out)]) == 0
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["x.jpg", "y.jpg", "z.jpg"]
    assert list(rows[0]) == ["file", "predicted", "p_no_tumour", "p_tumour"]
    for r in rows:
        p = np.array([float(r["p_no_tumour"]), float(r["p_tumour"])])
        assert abs(p.sum() - 1) < 1e-4 and r["predicted"] == ("no_tumour", "tumour")[int(p.argmax())]


SAM_TINY = dict(image_size=32, encoder_dim=16, encoder_depth=1, encoder_heads=2, window_size=0,
                global_attn_indexes=(0,), prompt_dim=16, mask_in_chans=4, decoder_depth=1, decoder_heads=2,
                decoder_mlp_dim=16, iou_head_hidden_dim=8)


@pytest.fixture(scope="module")
def sam_run(tmp_path_factory):
    """A tiny SAM (promptable_segmentation) work directory: 32x32 input, mask-folder source, step-0 weights."""
    return _make_run(tmp_path_factory.mktemp("sam"), "configs/sam_vit_b.py", model=SAM_TINY,
                     data=dict(image_size=32), eval=dict(batch_size=2))


def test_sam_prompts_file_masks_and_scores(sam_run, tmp_path, capsys):
    """A PNG folder and a prompts CSV (a box row, a points row with labels, and a JSON-style second prompt on one
    image): masks of the images' own sizes with values {0, 255} (`_p<k>` names for the image with two prompts),
    scores.csv rows in file order; a corrupt image is named in one error line, the others written, exit 1; the
    Python API gives the CLI's mask for the same prompt."""
    rng = np.random.default_rng(0)
    sizes = {"a": (40, 56), "b": (30, 30)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not an image")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('image,box,points,labels\na.png,"4,5,30,33",,\nb.png,,"10,12;20,8","1,0"\n'
                       'b.png,"2,2,25,27",,\nbad.png,"1,1,5,5",,\n')
    out = tmp_path / "out"
    assert predict.main(["predict", "--workdir", sam_run, "--input", str(tmp_path), "--output", str(out),
                         "--prompts", str(prompts)]) == 1
    cap = capsys.readouterr()
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.png" in errors[0], cap.err
    assert cap.out.strip().splitlines()[-1] == f"wrote 3 masks to {out}, 1 failed"
    assert sorted(os.listdir(out)) == ["a_mask.png", "b_p0_mask.png", "b_p1_mask.png", "scores.csv"]
    for fname, size in (("a_mask.png", sizes["a"]), ("b_p0_mask.png", sizes["b"]), ("b_p1_mask.png", sizes["b"])):
        m = np.asarray(Image.open(out / fname))
        assert m.shape == size and set(np.unique(m).tolist()) <= {0, 255}, fname
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["image"], r["prompt"], r["mask"]) for r in rows] == [
        ("a.png", "0", "a_mask.png"), ("b.png", "0", "b_p0_mask.png"), ("b.png", "1", "b_p1_mask.png")]
    assert all(np.isfinite(float(r["iou"])) for r in rows)

    predictor = inference.load_run(sam_run)
    res = predictor.segment_prompts(str(tmp_path / "a.png"), boxes=[4, 5, 30, 33])
    assert res["mask"].shape == (1, 40, 56) and res["iou"].shape == (1,)
    np.testing.assert_array_equal(res["mask"][0] * 255, np.asarray(Image.open(out / "a_mask.png")))
    assert abs(float(res["iou"][0]) - float(rows[0]["iou"])) < 1e-5
    arr = np.asarray(Image.open(tmp_path / "b.png"))
    pts = predictor.segment_prompts(arr, points=[[10, 12], [20, 8]], labels=[1, 0])
    np.testing.assert_array_equal(pts["mask"][0] * 255, np.asarray(Image.open(out / "b_p0_mask.png")))


def test_sam_malformed_prompt_row_exits_2(sam_run, tmp_path, capsys):
    """A malformed box (CSV row 2) and a missing image (JSON row 1): one error line
    naming the file and row, exit 2, nothing written."""
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    bad_csv = tmp_path / "p.csv"
    bad_csv.write_text('image,box,points\na.png,"1,1,9,9",\na.png,"9,9,3",\n')
    bad_json = tmp_path / "p.json"
    bad_json.write_text(json.dumps([{"image": "missing.png", "points": [[3, 4]]}]))
    out = tmp_path / "out"
    for prompts, words in ((bad_csv, ("p.csv row 2", "box")), (bad_json, ("p.json row 1", "missing.png"))):
        with pytest.raises(SystemExit) as e:
            predict.main(["predict", "--workdir", sam_run, "--input", str(tmp_path), "--output", str(out),
                          "--prompts", str(prompts)])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:"), err
        assert all(w in err[0] for w in words), err
    assert not out.exists()
