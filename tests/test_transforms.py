"""Seed S0 data transforms: CLAHE, the paired image/mask augmentation, their config wiring, the S0 split."""
from __future__ import annotations

import pickle

import ml_collections
import nibabel as nib
import numpy as np
import pytest

from jaxdiff.data import make_dataset, pipeline, transforms
from jaxdiff.data.sources import brats
from jaxdiff.errors import InputError

NO_OPS = dict(hflip=0.0, vflip=0.0, rot90=0.0, elastic=0.0, brightness_contrast_p=0.0)


def _example(size=32, seed=0):
    """An asymmetric mask (an L in one corner plus a blob) and an image that encodes it: +0.5 inside the
    mask, -0.5 outside, so `image > 0` must equal the mask after any geometric transform."""
    mask = np.zeros((size, size, 1), np.float32)
    mask[2:12, 3:6] = 1
    mask[9:12, 3:10] = 1
    yy, xx = np.mgrid[:size, :size]
    mask[((yy - 20) ** 2 + (xx - 22) ** 2 < 30), 0] = 1
    noise = np.random.default_rng(seed).uniform(-0.1, 0.1, (size, size, 2)).astype(np.float32)
    image = np.where(mask > 0, 0.5, -0.5).astype(np.float32) + noise
    return {"image": image, "mask": mask, "case": np.int32(7)}


def _low_contrast(size=64):
    """A dim image (values in [-0.6, -0.45]) with a smooth gradient plus fine texture."""
    yy, xx = np.mgrid[:size, :size] / size
    tex = np.random.default_rng(1).random((size, size))
    return (-0.6 + 0.05 * (xx + yy) + 0.05 * tex)[..., None].astype(np.float32)


def _block_std(img, block=8):
    h, w = img.shape
    return float(img.reshape(h // block, block, w // block, block).std(axis=(1, 3)).mean())


# ---------------------------------------------------------------- CLAHE

def test_clip_limit_conversion_matches_opencv_counts():
    assert transforms.skimage_clip_limit(2.0) == 2.0 / 256
    for tile_pixels in (30 * 30, 8 * 8, 16 * 16, 4):
        opencv_count = max(int(2.0 * tile_pixels / 256), 1)                  # cv2 clahe.cpp
        skimage_count = int(np.clip(transforms.skimage_clip_limit(2.0) * tile_pixels, 1, None))  # _adapthist.py
        assert opencv_count == skimage_count
    assert max(int(2.0 * 900 / 256), 1) == 7       # 240 x 240 slice, 8 x 8 tiles of 30 x 30 pixels


def test_clahe_range_local_contrast_and_clip_effect():
    ex = {"image": _low_contrast(), "mask": np.zeros((64, 64, 1), np.float32)}
    before = ex["image"].copy()
    out = transforms.clahe(ex)
    img = out["image"]
    assert img.shape == (64, 64, 1) and img.dtype == np.float32
    assert img.min() >= -1.0 and img.max() <= 1.0
    np.testing.assert_allclose((img + 1) * 127.5, np.round((img + 1) * 127.5), atol=1e-4)   # 256 levels
    assert _block_std(img[..., 0]) > 3 * _block_std(ex["image"][..., 0])
    assert out["mask"] is ex["mask"] and np.array_equal(ex["image"], before)      # input untouched
    # a higher clip limit allows more contrast (4 x 4 tiles of 256 pixels: clip counts 1, 2, 8)
    stds = [_block_std(transforms.clahe(ex, clip_limit=c, tiles=4)["image"][..., 0]) for c in (1.0, 2.0, 8.0)]
    assert stds[0] < stds[1] < stds[2]


def test_clahe_per_channel_and_flat_channel_unchanged():
    img = np.concatenate([_low_contrast(32), np.full((32, 32, 1), -1.0, np.float32)], axis=-1)
    out = transforms.clahe({"image": img})["image"]
    np.testing.assert_array_equal(out[..., 1], -1.0)
    np.testing.assert_array_equal(out[..., 0], transforms.clahe({"image": img[..., :1]})["image"][..., 0])


# ---------------------------------------------------------------- augmentation

@pytest.mark.parametrize("op, expect", [("hflip", lambda a: a[:, ::-1]), ("vflip", lambda a: a[::-1])])
def test_flips_move_image_and_mask_together(op, expect):
    ex = _example()
    out = transforms.augment(ex, np.random.default_rng(0), **{**NO_OPS, op: 1.0})
    np.testing.assert_array_equal(out["mask"], expect(ex["mask"]))
    np.testing.assert_array_equal(out["image"], expect(ex["image"]))
    assert out["case"] == 7


def test_every_geometric_op_keeps_mask_binary_and_aligned():
    ex = _example()
    dihedral = [np.rot90(m, k, axes=(0, 1)) for m in (ex["mask"], ex["mask"][:, ::-1]) for k in range(4)]
    for seed in range(40):
        out = transforms.augment(ex, np.random.default_rng(seed), elastic=0.0, brightness_contrast_p=0.0)
        assert out["mask"].shape == (32, 32, 1) and out["image"].shape == (32, 32, 2)
        assert set(np.unique(out["mask"])) <= {0.0, 1.0}
        assert any(np.array_equal(out["mask"], d) for d in dihedral)
        np.testing.assert_array_equal(out["image"][..., 0] > 0, out["mask"][..., 0] > 0)


def test_elastic_warp_keeps_mask_binary_and_aligned():
    ex = _example()
    changed = 0
    for seed in range(5):
        out = transforms.augment(ex, np.random.default_rng(seed), **{**NO_OPS, "elastic": 1.0},
                                 elastic_alpha=40.0, elastic_sigma=3.0)
        assert set(np.unique(out["mask"])) <= {0.0, 1.0}
        agree = np.mean((out["image"][..., 0] > 0) == (out["mask"][..., 0] > 0))
        assert agree > 0.97, agree
        changed += int(not np.array_equal(out["mask"], ex["mask"]))
    assert changed == 5
    # albumentations' defaults (alpha 1, sigma 50) move pixels by far less than one pixel
    out = transforms.augment(ex, np.random.default_rng(0), **{**NO_OPS, "elastic": 1.0})
    np.testing.assert_array_equal(out["mask"], ex["mask"])
    grid = np.stack(np.mgrid[:240, :240]).astype(np.float32)
    shift = transforms._elastic_coords((240, 240), np.random.default_rng(0), alpha=1.0, sigma=50.0) - grid
    assert 0 < np.abs(shift).max() < 0.1


def test_brightness_contrast_image_only_and_clipped():
    ex = _example()
    for seed in range(20):
        out = transforms.augment(ex, np.random.default_rng(seed), **{**NO_OPS, "brightness_contrast_p": 1.0},
                                 brightness=0.5, contrast=0.5)
        np.testing.assert_array_equal(out["mask"], ex["mask"])
        assert out["image"].min() >= -1.0 and out["image"].max() <= 1.0
        u, v = (ex["image"] + 1) / 2, (out["image"] + 1) / 2          # albumentations' [0, 1] space
        inside = (v > 1e-4) & (v < 1 - 1e-4)
        a, b = np.polyfit(u[inside], v[inside], 1)                      # v = a u + b where not clipped
        assert 0.5 - 1e-4 <= a <= 1.5 + 1e-4 and -0.5 - 1e-4 <= b <= 0.5 + 1e-4
        np.testing.assert_allclose(v[inside], a * u[inside] + b, atol=1e-5)


def test_augment_is_deterministic_given_rng():
    ex = _example()
    a = transforms.augment(ex, np.random.default_rng(3), elastic=1.0, elastic_alpha=20.0, elastic_sigma=3.0,
                           brightness_contrast_p=1.0)
    b = transforms.augment(ex, np.random.default_rng(3), elastic=1.0, elastic_alpha=20.0, elastic_sigma=3.0,
                           brightness_contrast_p=1.0)
    c = transforms.augment(ex, np.random.default_rng(4), elastic=1.0, elastic_alpha=20.0, elastic_sigma=3.0,
                           brightness_contrast_p=1.0)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert not np.array_equal(a["image"], c["image"])


@pytest.mark.parametrize("op, p, expected", [("hflip", 0.5, 0.5), ("vflip", 0.3, 0.3),
                                             ("rot90", 0.5, 0.375),        # k uniform in 0..3: 3/4 of p turn
                                             ("elastic", 0.1, 0.1), ("brightness_contrast_p", 0.2, 0.2)])
def test_ops_fire_with_configured_probability(op, p, expected):
    n = 2000
    ex = {"image": np.arange(16, dtype=np.float32).reshape(4, 4, 1) / 16 - 0.5,
          "mask": np.eye(4, dtype=np.float32)[..., None]}
    extra = dict(elastic_alpha=50.0, elastic_sigma=1.0) if op == "elastic" else {}
    rng = np.random.default_rng(0)
    fired = sum(not np.array_equal(transforms.augment(ex, rng, **{**NO_OPS, op: p}, **extra)["image"], ex["image"])
                for _ in range(n))
    assert abs(fired / n - expected) < 0.04, (op, fired / n)


# ---------------------------------------------------------------- config wiring

class FakeSlices:
    """A tiny source of `_example`s, 6 per split."""

    def __init__(self, split):
        self.split, self.modalities = split, ("t2", "flair")

    def __len__(self):
        return 6

    def __getitem__(self, idx):
        return _example(16, seed=100 * ("train", "val", "test").index(self.split) + idx)


def _cfg(**kw):
    return ml_collections.ConfigDict(dict(source="fake", seed=0, **kw))


@pytest.fixture
def fake_source(monkeypatch):
    monkeypatch.setitem(pipeline.SOURCES, "fake", lambda d, split: FakeSlices(split))


def test_from_config_switches():
    assert transforms.from_config(_cfg()) == (None, None)
    assert transforms.from_config(_cfg(clahe=True, augment=True)) == (transforms.clahe, transforms.augment)
    assert pipeline.train_transform(_cfg(augment=1)) is transforms.augment
    assert pipeline.train_transform(_cfg(clahe=True)) is None
    with pytest.raises(InputError, match="data.augment"):
        transforms.from_config(_cfg(augment="yes"))


def test_get_source_clahe_every_split_augment_train_only(fake_source):
    plain = {s: pipeline.get_source(_cfg(), s) for s in ("train", "val", "test")}
    assert all(isinstance(src, FakeSlices) for src in plain.values())
    for split in ("train", "val", "test"):
        src = pipeline.get_source(_cfg(clahe=True, augment=True), split)
        assert len(src) == 6 and src.modalities == ("t2", "flair")
        for i in (0, 5):
            want = transforms.clahe(FakeSlices(split)[i])
            np.testing.assert_array_equal(src[i]["image"], want["image"])
            np.testing.assert_array_equal(src[i]["mask"], want["mask"])
        clone = pickle.loads(pickle.dumps(src))
        np.testing.assert_array_equal(clone[1]["image"], src[1]["image"])
    # the training augmentation reaches the train stream through make_dataset
    cfg = _cfg(clahe=True, augment=True)
    train = pipeline.get_source(cfg, "train")
    batch = next(iter(make_dataset(train, 6, seed=0, shuffle=False, num_epochs=1, shard_index=0, shard_count=1,
                                   transform=pipeline.train_transform(cfg))))
    clean = np.stack([train[i]["mask"] for i in range(6)])
    assert set(np.unique(batch["mask"])) <= {0.0, 1.0} and not np.array_equal(batch["mask"], clean)


def test_faithful_augment_test_augments_val_and_test_deterministically(fake_source):
    cfg = _cfg(augment=True, faithful_augment_test=True)
    assert isinstance(pipeline.get_source(cfg, "train"), FakeSlices)            # train: via make_dataset only
    for split in ("val", "test"):
        src = pipeline.get_source(cfg, split)
        raw = FakeSlices(split)
        masks = [src[i]["mask"] for i in range(6)]
        assert any(not np.array_equal(m, raw[i]["mask"]) for i, m in enumerate(masks))
        for i in range(6):
            np.testing.assert_array_equal(src[i]["mask"], masks[i])             # same draw every read
            np.testing.assert_array_equal(src[i]["image"][..., 0] > 0, masks[i][..., 0] > 0)
    assert isinstance(pipeline.get_source(_cfg(faithful_augment_test=True), "test"), FakeSlices)


# ---------------------------------------------------------------- the seed S0 split and slices

def test_seed_s0_split_sizes_disjoint_deterministic():
    cases = [f"BraTS20_Training_{i:03d}" for i in range(1, 369)]
    parts = brats.seed_s0_split(cases)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [250, 73, 45]
    assert set().union(*map(set, parts.values())) == set(cases)
    assert not set(parts["train"]) & set(parts["val"]) and not set(parts["val"]) & set(parts["test"])
    assert brats.seed_s0_split(cases) == parts
    assert parts["val"] == sorted(parts["val"])
    small = brats.seed_s0_split(cases[:40])                         # scaled: 40 * 118 / 368 = 12.8 -> 13 held
    assert [len(small[s]) for s in ("train", "val", "test")] == [27, 8, 5]
    assert [len(v) for v in brats.seed_s0_split(cases[:3]).values()] == [1, 1, 1]
    with pytest.raises(InputError, match="data.split"):
        brats.seed_s0_split(cases[:2])


def test_seed_s0_slices_and_split_on_disk(tmp_path):
    assert brats.SEED_S0_SLICES == (70, 73, 77, 80, 83, 87, 90, 93, 97, 100)
    shape = (6, 6, 101)
    for c in range(5):
        case = f"BraTS20_Training_{c:03d}"
        (tmp_path / case).mkdir()
        seg = np.zeros(shape, np.uint8)
        seg[1:3, 2:4, 60:90] = 2
        vol = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        for name, arr in (("t2", vol), ("seg", seg)):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / case / f"{case}_{name}.nii.gz"))
    cfg = ml_collections.ConfigDict(dict(source="brats", root=str(tmp_path), image_size=6, split="seed_s0",
                                         slices="seed_s0", normalise="volume_max", clahe=True))
    srcs = {s: pipeline.get_source(cfg, s) for s in ("train", "val", "test")}
    assert [len(srcs[s]) for s in ("train", "val", "test")] == [30, 10, 10]     # 5 cases -> 3 / 1 / 1
    assert srcs["train"].slices == brats.SEED_S0_SLICES
    ex = srcs["val"][0]
    assert ex["image"].shape == (6, 6, 1) and -1.0 <= ex["image"].min() <= ex["image"].max() <= 1.0
    with pytest.raises(InputError, match="data.split"):
        pipeline.get_source(ml_collections.ConfigDict(dict(source="brats", root=str(tmp_path), split="kfold")),
                            "train")
    with pytest.raises(InputError, match="data.slices"):
        pipeline.get_source(ml_collections.ConfigDict(dict(source="brats", root=str(tmp_path), slices="mid")),
                            "train")
