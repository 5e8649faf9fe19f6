"""LGG kaggle_3m loader: listing and pairing, slice reading, patient-level and seed S1 splits, errors, config."""
from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest
import tifffile
from sklearn.model_selection import train_test_split

from jaxdiff.data import get_source, make_dataset
from jaxdiff.data.sources import lgg
from jaxdiff.errors import InputError

PATIENTS = ("TCGA_CS_4941_19960909", "TCGA_DU_5849_19950405", "TCGA_HT_7692_19960724")
SLICE_NUMBERS = (1, 2, 9, 10)                # natural order: 9 before 10
SIZE = 16


def _write_lgg(root, size: int = SIZE) -> dict:
    """A tiny kaggle_3m folder: 3 patients x 4 slices; even slice numbers have an 8x8 tumour. Returns
    {(patient, n): (image uint8 (size, size, 3), mask uint8 (size, size))}."""
    rng = np.random.default_rng(0)
    written = {}
    for p in PATIENTS:
        os.makedirs(root / p)
        for n in SLICE_NUMBERS:
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), np.uint8)
            if n % 2 == 0:
                mask[4:12, 3:11] = 255
            tifffile.imwrite(root / p / f"{p}_{n}.tif", image)
            tifffile.imwrite(root / p / f"{p}_{n}_mask.tif", mask)
            written[p, n] = (image, mask)
    (root / "data.csv").write_text("Patient,RNASeqCluster\nTCGA_CS_4941,2\n")
    os.makedirs(root / "not_a_patient")
    return written


def _all(root, **kw) -> lgg.LggSlices:
    """Every slice in one split (fractions (1, 0, 0) leave val and test empty)."""
    return lgg.LggSlices(root, "train", image_size=SIZE, fractions=(1, 0, 0), **kw)


def _one_line_naming(err, path):
    msg = str(err.value)
    assert os.fspath(path) in msg and "\n" not in msg, msg


def test_listing_pairs_files_in_natural_order(tmp_path):
    _write_lgg(tmp_path)
    slices = lgg.list_slices(str(tmp_path))
    assert len(slices) == 12 and [s.patient for s in slices[:4]] == [PATIENTS[0]] * 4
    names = [os.path.basename(s.image) for s in slices[:4]]
    assert names == [f"{PATIENTS[0]}_{n}.tif" for n in SLICE_NUMBERS]
    assert all(s.mask == s.image[:-4] + "_mask.tif" for s in slices)


def test_slices_values_shapes_and_resize(tmp_path):
    written = _write_lgg(tmp_path)
    src = _all(tmp_path)
    assert len(src) == 12 and src.modalities == lgg.CHANNELS
    for i, files in enumerate(src.slices):
        ex = src[i]
        n = int(os.path.basename(files.image)[:-4].rsplit("_", 1)[1])
        image, mask = written[files.patient, n]
        assert ex["image"].shape == (SIZE, SIZE, 3) and ex["image"].dtype == np.float32
        assert ex["mask"].shape == (SIZE, SIZE, 1) and ex["mask"].dtype == np.float32
        np.testing.assert_allclose(ex["image"], image / 127.5 - 1.0, atol=1e-6)     # native size: no resampling
        np.testing.assert_array_equal(ex["mask"][..., 0], mask > 0)
        assert ex["case"].dtype == np.int32 and int(ex["case"]) == PATIENTS.index(files.patient)
    small = lgg.LggSlices(tmp_path, "train", image_size=8, fractions=(1, 0, 0))
    ex = small[1]                                        # slice 2: tumour rows 4..11, columns 3..10 of 16
    assert ex["image"].shape == (8, 8, 3) and ex["mask"].shape == (8, 8, 1)
    assert -1.0 <= ex["image"].min() and ex["image"].max() <= 1.0
    assert ex["image"].std() < src[1]["image"].std()     # anti-aliasing smooths the random texture
    assert set(np.unique(ex["mask"])) == {0.0, 1.0} and ex["mask"].sum() == pytest.approx(16, abs=4)


def test_patient_split_disjoint_on_disk_and_on_a_list(tmp_path):
    _write_lgg(tmp_path)
    parts = {s: lgg.LggSlices(tmp_path, s, image_size=SIZE, seed=0, fractions=(1, 1, 1)) for s in ("train", "val",
                                                                                                  "test")}
    patients = [set(p.patients) for p in parts.values()]
    assert [len(p) for p in patients] == [1, 1, 1] and set.union(*patients) == set(PATIENTS)
    assert all(len(p) == 4 for p in parts.values())
    assert all({f.patient for f in parts[s].slices} == set(parts[s].patients) for s in parts)
    # a kaggle_3m-sized list: 110 patients with 20..88 slices each
    counts = np.random.default_rng(1).integers(20, 89, 110)
    names = [f"TCGA_{i:03d}" for i, c in enumerate(counts) for _ in range(c)]
    split = lgg.patient_split(names, seed=42)
    assert split.keys() == {"train", "val", "test"}
    assert sorted(np.concatenate(list(split.values()))) == list(range(len(names)))
    owners = [{names[i] for i in idx} for idx in split.values()]
    assert [len(o) for o in owners] == [88, 11, 11] and not (owners[0] & owners[1] or owners[0] & owners[2]
                                                             or owners[1] & owners[2])
    again = lgg.patient_split(names, seed=42)
    assert all(np.array_equal(split[s], again[s]) for s in split)
    assert not np.array_equal(lgg.patient_split(names, seed=0)["test"], split["test"])


def test_lgg_3536_393_split_sizes_and_stratification():
    n, positives = 3929, 1373
    has_tumour = np.zeros(n, bool)
    has_tumour[np.random.default_rng(3).permutation(n)[:positives]] = True
    split = lgg.split_3536_393(has_tumour)
    assert (len(split["train"]), len(split["test"])) == lgg.SPLIT_3536_393 == (3536, 393)
    assert np.array_equal(split["val"], split["test"])
    assert np.array_equal(np.sort(np.concatenate([split["train"], split["test"]])), np.arange(n))
    assert abs(has_tumour[split["test"]].sum() - 393 * positives / n) <= 1          # stratified: 137 or 138
    _, expected = train_test_split(np.arange(n), test_size=0.1, stratify=has_tumour, random_state=42)
    assert np.array_equal(split["test"], np.sort(expected))
    plain = lgg.split_3536_393(has_tumour, stratified=False)
    assert len(plain["test"]) == 393 and not np.array_equal(plain["test"], split["test"])


def test_lgg_3536_393_split_on_disk(tmp_path):
    _write_lgg(tmp_path)
    train = lgg.LggSlices(tmp_path, "train", image_size=SIZE, split_mode="lgg_3536_393")
    val = lgg.LggSlices(tmp_path, "val", image_size=SIZE, split_mode="lgg_3536_393")
    assert (len(train), len(val)) == (10, 2)                       # test_size 0.1 of 12 slices rounds up
    assert [val[i]["mask"].max() for i in range(2)] == [0.0, 1.0]  # one slice of each class
    assert not {f.image for f in train.slices} & {f.image for f in val.slices}


def _remove(root, name):
    os.remove(root / PATIENTS[1] / name)


def _write(root, name, data):
    tifffile.imwrite(root / PATIENTS[1] / name, data)


def _garbage(root, name):
    path = root / PATIENTS[1] / name
    path.write_bytes(path.read_bytes()[:40])


P = PATIENTS[1]
BAD_AT_LISTING = {
    "image without mask": (lambda r: _remove(r, f"{P}_2_mask.tif"), f"{P}/{P}_2.tif"),
    "mask without image": (lambda r: _remove(r, f"{P}_9.tif"), f"{P}/{P}_9_mask.tif"),
}
BAD_AT_READING = {
    "mask size differs": (lambda r: _write(r, f"{P}_2_mask.tif", np.zeros((8, 8), np.uint8)), f"{P}_2_mask.tif"),
    "grey mask value": (lambda r: _write(r, f"{P}_2_mask.tif", np.full((SIZE, SIZE), 128, np.uint8)),
                        f"{P}_2_mask.tif"),
    "mixed 1 and 255": (lambda r: _write(r, f"{P}_2_mask.tif", np.eye(SIZE, dtype=np.uint8) * 255
                                         + np.fliplr(np.eye(SIZE, dtype=np.uint8)) * 1), f"{P}_2_mask.tif"),
    "grey image": (lambda r: _write(r, f"{P}_9.tif", np.zeros((SIZE, SIZE), np.uint8)), f"{P}_9.tif"),
    "corrupt image": (lambda r: _garbage(r, f"{P}_10.tif"), f"{P}_10.tif"),
    "corrupt mask": (lambda r: (r / P / f"{P}_1_mask.tif").write_bytes(b"not a tiff"), f"{P}_1_mask.tif"),
}


@pytest.mark.parametrize("case", sorted(BAD_AT_LISTING))
def test_unpaired_files_fail_at_listing(tmp_path, case):
    _write_lgg(tmp_path)
    damage, name = BAD_AT_LISTING[case]
    damage(tmp_path)
    with pytest.raises(InputError) as e:
        _all(tmp_path)
    _one_line_naming(e, tmp_path / name)


@pytest.mark.parametrize("case", sorted(BAD_AT_READING))
def test_bad_files_fail_when_read(tmp_path, case):
    _write_lgg(tmp_path)
    damage, name = BAD_AT_READING[case]
    damage(tmp_path)
    src = _all(tmp_path)                                 # listing only pairs names
    with pytest.raises(InputError) as e:
        [src[i] for i in range(len(src))]
    _one_line_naming(e, tmp_path / P / name)


def test_empty_or_foreign_root_names_the_root(tmp_path):
    with pytest.raises(InputError) as e:
        _all(tmp_path)
    _one_line_naming(e, tmp_path)
    os.makedirs(tmp_path / "kaggle_3m" / "TCGA_X")       # patients one level down: the wrong root
    (tmp_path / "data.csv").write_text("x\n")
    with pytest.raises(InputError, match="TCGA_") as e:
        _all(tmp_path)
    _one_line_naming(e, tmp_path)
    with pytest.raises(InputError) as e:                 # a patient folder without slices
        _all(tmp_path / "kaggle_3m")
    _one_line_naming(e, tmp_path / "kaggle_3m" / "TCGA_X")


def test_get_source_from_config(tmp_path):
    _write_lgg(tmp_path)
    cfg = ml_collections.ConfigDict(dict(source="lgg", root=str(tmp_path), image_size=16, seed=0, channels=3,
                                         fractions=(1, 1, 1), modality="t1,t2,flair", split="random"))
    src = get_source(cfg, "train")
    assert isinstance(src, lgg.LggSlices) and len(src) == 4
    batch = next(iter(make_dataset(src, batch_size=2, seed=0, shard_index=0, shard_count=1)))
    assert batch["image"].shape == (2, 16, 16, 3) and batch["mask"].shape == (2, 16, 16, 1)
    assert batch["case"].dtype == np.int32
    fixed = ml_collections.ConfigDict(dict(source="lgg", root=str(tmp_path), image_size=8, split="lgg_3536_393"))
    assert get_source(fixed, "val").slices == get_source(fixed, "test").slices
    with pytest.raises(InputError, match="data.channels"):
        get_source(ml_collections.ConfigDict(dict(source="lgg", root=str(tmp_path), channels=1)), "train")
    with pytest.raises(InputError, match="data.split"):
        get_source(ml_collections.ConfigDict(dict(source="lgg", root=str(tmp_path), split="brats_250_73_45")), "train")
    missing = tmp_path / "absent"
    with pytest.raises(InputError, match="data.root") as e:
        get_source(ml_collections.ConfigDict(dict(source="lgg", root=str(missing))), "train")
    _one_line_naming(e, missing)
