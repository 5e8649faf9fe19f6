"""Data layer: NIfTI I/O, the MNI152 phantom, BraTS on disk, grain pipelines and the source factory."""
from __future__ import annotations

import gzip
import os

import ml_collections
import nibabel as nib
import numpy as np
import pytest

from jaxdiff.data import get_source, make_dataset
from jaxdiff.data.sources import axial_slices, split_cases
from jaxdiff.data.sources import brats
from jaxdiff.data.sources import phantom as P
from jaxdiff.errors import InputError
from jaxdiff.io import load_nifti, nifti_shape, save_nifti

# BraTS-like orientation (LPS-ish: x and y flipped relative to RAS), non-unit spacing and an offset.
LPS_AFFINE = np.array([[-1.5, 0, 0, 30.0], [0, -1.5, 0, 20.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1.0]])


def _one_line_naming(err, path):
    msg = str(err.value)
    assert os.fspath(path) in msg and "\n" not in msg, msg


class ArraySource:
    """Random-access source of {"x": idx}."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": np.int64(i), "v": np.full((2,), i, np.float32)}


# ---------------------------------------------------------------- NIfTI

def test_nifti_roundtrip_keeps_affine_and_reorients(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 4)).astype(np.float32)
    path = save_nifti(str(tmp_path / "sub" / "v.nii.gz"), data, LPS_AFFINE)
    raw = nib.load(path)
    np.testing.assert_allclose(raw.affine, LPS_AFFINE)
    assert raw.header["qform_code"] > 0 and raw.header["sform_code"] > 0
    ras, affine = load_nifti(path)
    assert ras.dtype == np.float32 and ras.shape == (5, 6, 4) == nifti_shape(path)
    assert np.all(np.diag(affine)[:3] > 0)                       # RAS: positive axes
    # the same voxel value sits at the same world position after reorientation
    i, j, k = 1, 2, 3
    world = LPS_AFFINE @ [i, j, k, 1]
    ijk = np.round(np.linalg.inv(affine) @ world).astype(int)[:3]
    assert ras[tuple(ijk)] == pytest.approx(data[i, j, k])
    # saving the RAS array with its affine writes the same geometry back
    ras2, affine2 = load_nifti(save_nifti(str(tmp_path / "w.nii"), ras[..., None], affine))
    np.testing.assert_allclose(affine2, affine)
    np.testing.assert_array_equal(ras2, ras)


def test_nifti_bad_files_raise_one_line_naming_file(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(InputError) as e:
        load_nifti(str(missing))
    _one_line_naming(e, missing)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a nifti\n" * 50)
    with pytest.raises(InputError) as e:
        load_nifti(str(garbage))
    _one_line_naming(e, garbage)
    good = save_nifti(str(tmp_path / "good.nii"), np.ones((20, 20, 20), np.float32), np.eye(4))
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(gzip.compress(open(good, "rb").read())[:-200])
    with pytest.raises(InputError) as e:
        load_nifti(str(truncated))
    _one_line_naming(e, truncated)
    bad = np.ones((3, 3, 3), np.float32)
    bad[1, 1, 1] = np.nan
    nan_path = save_nifti(str(tmp_path / "nan.nii.gz"), bad, np.eye(4))
    with pytest.raises(InputError, match="NaN") as e:
        load_nifti(nan_path)
    _one_line_naming(e, nan_path)


# ---------------------------------------------------------------- phantom

def test_phantom_case_deterministic_and_plausible():
    a = P.make_case(3, seed=1)
    P.make_case.cache_clear()
    P._plan.cache_clear()
    b = P.make_case(3, seed=1)
    assert a is not b
    for k in (*P.MODALITIES, "seg", "affine"):
        np.testing.assert_array_equal(a[k], b[k])
    other = P.make_case(4, seed=1)
    assert np.abs(other["t1"] - a["t1"]).mean() > 0.01
    assert a["t1"].shape == a["t2"].shape == a["seg"].shape == P.DEFAULT_SHAPE
    assert a["t1"].dtype == np.float32 and a["seg"].dtype == np.uint8
    np.testing.assert_allclose(np.diag(a["affine"]), [2, 2, 2, 1])
    for m in P.MODALITIES:
        v = a[m]
        assert v.shape == P.DEFAULT_SHAPE and v.dtype == np.float32
        assert np.all(np.isfinite(v)) and v.min() >= 0 and 0.7 < v.max() < 2.0, m
    assert not a["t1"].flags.writeable                          # cached arrays are protected


def test_phantom_labels_tumour_fraction_and_contrast():
    seed, n = 0, 10
    flags = [P.has_tumour(i, seed) for i in range(n)]
    assert 0 < sum(flags) < n                                   # ~80% tumours, some tumour-free
    free = P.make_case(flags.index(False), seed)
    assert not free["seg"].any()
    case = P.make_case(flags.index(True), seed)
    labels = set(np.unique(case["seg"]).tolist())
    assert labels <= {0, 1, 2, 4} and {2, 4} <= labels
    assert np.all(case["brain"][case["seg"] > 0])               # tumour inside the brain
    brain = (case["brain"] > 0) & (case["seg"] == 0)
    oedema, core = case["seg"] == 2, np.isin(case["seg"], (1, 4))
    assert case["t2"][oedema].mean() > case["t2"][brain].mean() + 0.1    # oedema bright in T2
    assert case["t1"][core].mean() < case["t1"][brain].mean() - 0.1      # core dark in T1


def test_phantom_flair_and_t1ce_contrast():
    seed = 0
    case = P.make_case([P.has_tumour(i, seed) for i in range(10)].index(True), seed)
    seg, t2 = case["seg"], case["t2"]
    assert {1, 2, 4} <= set(np.unique(seg).tolist())
    normal = (case["brain"] > 0) & (seg == 0)
    # tissue classes of the normal brain from the (noisy, biased) T2: WM 0.3, GM 0.55, CSF 1.0
    wm, gm, csf = normal & (t2 < 0.36), normal & (t2 > 0.48) & (t2 < 0.62), normal & (t2 > 0.85)
    assert min(wm.sum(), gm.sum(), csf.sum()) > 1000
    flair = case["flair"]
    assert flair[csf].mean() < flair[wm].mean() - 0.1 < flair[gm].mean() - 0.1   # CSF suppressed, WM < GM
    assert flair[seg == 2].mean() > flair[normal].mean() + 0.15                   # oedema bright
    assert flair[seg == 4].mean() > flair[normal].mean() + 0.1                    # tumour bright
    assert flair[seg == 1].mean() < flair[seg == 2].mean() - 0.1                  # necrosis darker
    t1, t1ce, rim, nec = case["t1"], case["t1ce"], seg == 4, seg == 1
    assert t1ce[rim].mean() > t1ce[normal].mean() + 0.1                           # enhancing rim bright
    assert t1ce[rim].mean() > t1ce[nec].mean() + 0.2                              # necrotic core dark
    assert t1ce[rim].mean() / t1ce[normal].mean() > 1.2 > 1.0 > t1[rim].mean() / t1[normal].mean()
    assert t1ce[wm].mean() > t1ce[gm].mean() > t1ce[csf].mean()                   # healthy tissue as in T1


def test_phantom_partial_render_matches_whole_volume():
    plan = P._plan(5, 0, P.DEFAULT_SHAPE, P.DEFAULT_VOXEL_MM, 0.8)
    ks = P._choose_slices(plan, 6, tumour_only=False)
    part, whole = P._render(plan, ks), P.make_case(5, 0)
    for k in (*P.MODALITIES, "seg"):
        np.testing.assert_array_equal(part[k], whole[k][:, :, ks])
    subset = P._render(plan, ks, ("flair", "t1"))                  # contrasts render independently
    assert set(subset) == {"flair", "t1", "seg", "brain"}
    for k in ("flair", "t1", "seg"):
        np.testing.assert_array_equal(subset[k], whole[k][:, :, ks])


def test_phantom_slices_splits_shapes_ranges():
    kw = dict(image_size=32, num_cases=12, slices_per_case=4, seed=3)
    splits = {s: P.PhantomSlices(s, **kw) for s in ("train", "val", "test")}
    cases = [set(src.cases) for src in splits.values()]
    assert set.union(*cases) == set(range(12)) and sum(map(len, cases)) == 12   # disjoint, complete
    src = P.PhantomSlices("val", modality=("t1", "t2"), **kw)
    assert len(src) == 4 * len(src.cases)
    ex = src[1]
    assert ex["image"].shape == (32, 32, 2) and ex["mask"].shape == (32, 32, 1)
    assert ex["image"].dtype == np.float32 and -1.0 <= ex["image"].min() and ex["image"].max() <= 1.0
    assert set(np.unique(ex["mask"]).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(src[1]["image"], ex["image"])
    three = P.PhantomSlices("val", modality="t1,t2,flair", **kw)[1]["image"]
    flair = P.PhantomSlices("val", modality="flair", **kw)[1]["image"]
    assert three.shape == (32, 32, 3) and flair.shape == (32, 32, 1)
    np.testing.assert_array_equal(three, np.concatenate([ex["image"], flair], axis=-1))   # channel order
    only = P.PhantomSlices("train", tumour_only=True, **kw)
    assert all(P.has_tumour(c, 3) for c in only.cases)
    with_mask = np.mean([only[i]["mask"].any() for i in range(len(only))])
    assert with_mask > 0.8


def test_phantom_volumes_affine_follows_resampling():
    vol = P.PhantomVolumes("test", shape=(16, 16, 16), num_cases=10)
    ex = vol[0]
    assert ex["image"].shape == (16, 16, 16, 1) and ex["affine"].shape == (4, 4)
    assert -1.0 <= ex["image"].min() < ex["image"].max() <= 1.0
    full = P.grid_affine()
    centre_full = full @ [*(np.asarray(P.DEFAULT_SHAPE) - 1) / 2.0, 1]
    centre_small = ex["affine"] @ [7.5, 7.5, 7.5, 1]
    np.testing.assert_allclose(centre_small, centre_full, atol=1e-3)       # same field of view
    np.testing.assert_allclose(np.diag(ex["affine"])[:3], 2.0 * np.asarray(P.DEFAULT_SHAPE) / 16, rtol=1e-6)
    multi = P.PhantomVolumes("test", shape=(16, 16, 16), num_cases=10, modality="t1ce,t1")[0]
    assert multi["image"].shape == (16, 16, 16, 2)
    np.testing.assert_array_equal(multi["image"][..., 1:], ex["image"])
    assert np.abs(multi["image"][..., 0] - ex["image"][..., 0]).mean() > 0.005   # own noise and bias


def test_split_cases_deterministic_disjoint():
    s1, s2 = split_cases(range(10), 7), split_cases(range(10), 7)
    assert s1 == s2 and [len(s1[k]) for k in ("train", "val", "test")] == [8, 1, 1]
    assert split_cases(range(10), 8) != s1
    assert sorted(s1["train"] + s1["val"] + s1["test"]) == list(range(10))


# ---------------------------------------------------------------- pipeline

def _batches(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_pipeline_deterministic_and_epochs_cover_data():
    src = ArraySource(23)
    a = _batches(make_dataset(src, 4, seed=1, shard_index=0, shard_count=1), 8)
    b = _batches(make_dataset(src, 4, seed=1, shard_index=0, shard_count=1), 8)
    c = _batches(make_dataset(src, 4, seed=2, shard_index=0, shard_count=1), 8)
    assert all(np.array_equal(x["x"], y["x"]) for x, y in zip(a, b))
    assert not all(np.array_equal(x["x"], y["x"]) for x, y in zip(a, c))
    assert a[0]["v"].shape == (4, 2)
    epoch = list(make_dataset(src, 5, seed=1, num_epochs=1, drop_remainder=False, shard_index=0, shard_count=1))
    assert sorted(np.concatenate([e["x"] for e in epoch]).tolist()) == list(range(23))
    assert np.concatenate([e["x"] for e in epoch]).tolist() != list(range(23))   # shuffled


def test_pipeline_state_restore_gives_same_next_batch():
    ds = make_dataset(ArraySource(30), 4, seed=0, shard_index=0, shard_count=1,
                      transform=lambda ex, rng: {**ex, "noise": rng.standard_normal(3)})
    it = iter(ds)
    for _ in range(9):                                          # crosses an epoch boundary
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    it2 = iter(ds)
    it2.set_state(state)
    for want in expected:
        got = next(it2)
        np.testing.assert_array_equal(got["x"], want["x"])
        np.testing.assert_array_equal(got["noise"], want["noise"])


def test_pipeline_shards_disjoint():
    src = ArraySource(21)
    seen = []
    for shard in range(2):
        ds = make_dataset(src, 2, seed=0, num_epochs=1, shard_index=shard, shard_count=2)
        seen.append(np.concatenate([b["x"] for b in ds]).tolist())
    assert len(seen[0]) == len(seen[1]) == 10                    # equal shards (one example dropped)
    assert not set(seen[0]) & set(seen[1])


def test_pipeline_on_phantom_slices_restores():
    src = P.PhantomSlices("val", image_size=16, num_cases=20, slices_per_case=4, seed=0)
    ds = make_dataset(src, 4, seed=0, shard_index=0, shard_count=1)
    it = iter(ds)
    first = next(it)
    assert first["image"].shape == (4, 16, 16, 1) and first["mask"].shape == (4, 16, 16, 1)
    state = it.get_state()
    want = next(it)
    it2 = iter(ds)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["image"], want["image"])


# ---------------------------------------------------------------- config factory

def test_get_source_from_config_and_errors(tmp_path):
    cfg = ml_collections.ConfigDict(dict(source="phantom", image_size=16, modality="t1,t2", channels=2,
                                         num_cases=6, slices_per_case=2, seed=0, root=""))
    src = get_source(cfg, "train")
    assert src[0]["image"].shape == (16, 16, 2)
    vol = get_source(ml_collections.ConfigDict(dict(source="phantom3d", image_size=(8, 8, 8), num_cases=6)), "val")
    assert vol[0]["image"].shape == (8, 8, 8, 1)
    with pytest.raises(InputError, match="data.source"):
        get_source(ml_collections.ConfigDict(dict(source="mnist")), "train")
    with pytest.raises(InputError, match="data.channels"):
        get_source(ml_collections.ConfigDict(dict(source="phantom", modality="t2", channels=3)), "train")
    with pytest.raises(InputError, match="data.modality"):
        get_source(ml_collections.ConfigDict(dict(source="phantom", modality="dwi")), "train")
    missing = tmp_path / "no_brats_here"
    with pytest.raises(InputError, match="data.root") as e:
        get_source(ml_collections.ConfigDict(dict(source="brats", root=str(missing))), "train")
    _one_line_naming(e, missing)


# ---------------------------------------------------------------- BraTS on disk

def _write_brats(root, n_cases=4, shape=(16, 16, 12)):
    rng = np.random.default_rng(0)
    for c in range(n_cases):
        case = f"BraTS20_Training_{c:03d}"
        os.makedirs(root / case)
        seg = np.zeros(shape, np.uint8)
        seg[2:6, 3:8, 4:9] = 2
        seg[3:5, 4:6, 5:7] = 4
        for m in brats.MODALITIES:
            save_nifti(str(root / case / f"{case}_{m}.nii.gz"), rng.random(shape).astype(np.float32) * 100,
                       LPS_AFFINE)
        save_nifti(str(root / case / f"{case}_seg.nii.gz"), seg, LPS_AFFINE)
    return [f"BraTS20_Training_{c:03d}" for c in range(n_cases)]


def test_brats_layout_loads_in_ras(tmp_path):
    cases = _write_brats(tmp_path)
    assert brats.list_cases(str(tmp_path)) == cases
    src = brats.BratsSlices(str(tmp_path), "train", modalities=("t2", "flair"), image_size=16, seed=0,
                            fractions=(1, 0, 0))
    assert len(src) == 4 * 12
    ex = src[12 + 5]                                            # case 1, slice 5
    assert ex["image"].shape == (16, 16, 2) and ex["mask"].shape == (16, 16, 1) and int(ex["case"]) == 1
    assert -1.0 <= ex["image"].min() and ex["image"].max() <= 1.0
    data, _ = load_nifti(str(tmp_path / cases[1] / f"{cases[1]}_seg.nii.gz"))
    np.testing.assert_array_equal(ex["mask"][..., 0], np.rot90(data[:, :, 5] > 0))
    seg = np.zeros((16, 16, 12), bool)
    seg[2:6, 3:8, 4:9] = True
    np.testing.assert_array_equal(data > 0, seg[::-1, ::-1, :])  # x and y flipped to RAS
    small = brats.BratsSlices(str(tmp_path), "val", image_size=8, slice_indices=[5, 6], seed=0)
    assert len(small) == 2 * len(small.cases) and small[0]["image"].shape == (8, 8, 1)


def _case_error(root, case, modalities=("t2",)):
    with pytest.raises(InputError) as e:
        brats.load_case(str(root), case, modalities)
    return e


def test_brats_errors_name_the_file(tmp_path):
    cases = _write_brats(tmp_path)
    d = tmp_path / cases[0]
    os.remove(d / f"{cases[0]}_t2.nii.gz")
    src = brats.BratsSlices(str(tmp_path), "train", modalities=("t2",), image_size=16, seed=0,
                            slice_indices=[3], fractions=(1, 0, 0))   # files are checked lazily
    with pytest.raises(InputError) as e:
        src[0]
    _one_line_naming(e, d / f"{cases[0]}_t2.nii.gz")

    corrupt = tmp_path / cases[1] / f"{cases[1]}_t2.nii.gz"
    corrupt.write_bytes(np.random.default_rng(0).bytes(3000))
    _one_line_naming(_case_error(tmp_path, cases[1]), corrupt)

    misshaped = tmp_path / cases[2] / f"{cases[2]}_flair.nii.gz"
    save_nifti(str(misshaped), np.ones((16, 16, 10), np.float32), LPS_AFFINE)
    _one_line_naming(_case_error(tmp_path, cases[2], ("t2", "flair")), misshaped)

    seg = tmp_path / cases[3] / f"{cases[3]}_seg.nii.gz"
    save_nifti(str(seg), np.full((16, 16, 12), 0.5, np.float32), LPS_AFFINE)
    _one_line_naming(_case_error(tmp_path, cases[3]), seg)

    with pytest.raises(InputError) as e:
        brats.list_cases(str(tmp_path / "absent"))
    _one_line_naming(e, tmp_path / "absent")


def test_axial_slices_pad_and_resize():
    vol = np.zeros((10, 6, 3), np.float32) - 1.0
    vol[4:6, 2:4, 1] = 1.0
    mask = (vol > 0).astype(np.uint8)
    images, masks = axial_slices([vol], mask, [1], 20)
    assert images.shape == (1, 20, 20, 1) and masks.shape == (1, 20, 20, 1)
    assert images.min() >= -1 and masks.sum() > 0
    assert np.all(images[masks > 0] > 0)
