"""IXI T1 loader (jaxdiff.data.sources.ixi) on small files written in the IXI layout with nibabel:
RAS reorientation, resampling to the target spacing, crop/pad, percentile clip and normalisation, splits and
errors."""
from __future__ import annotations

import ml_collections
import nibabel as nib
import numpy as np
import pytest

from jaxdiff.data import pipeline
from jaxdiff.data.sources import ixi
from jaxdiff.errors import InputError

# array axes (i, j, k) run toward Left (2 mm), Posterior (1.5 mm), Superior (1 mm): not RAS, not identity
AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, -1.5, 0, 40.0], [0, 0, 1.0, -20.0], [0, 0, 0, 1]])
SHAPE = (10, 12, 14)
MARK = (2, 3, 8)                      # corner of a bright 3x3x3 block off every centre plane (asymmetric)


def volume(seed: int) -> np.ndarray:
    """Random intensities 100..200 with a bright 3x3x3 block (900) at MARK."""
    rng = np.random.default_rng(seed)
    v = 100.0 + 100.0 * rng.random(SHAPE)
    i, j, k = MARK
    v[i:i + 3, j:j + 3, k:k + 3] = 900.0
    return v.astype(np.float32)


@pytest.fixture
def root(tmp_path):
    for n in range(5):
        nib.save(nib.Nifti1Image(volume(n), AFFINE), str(tmp_path / f"IXI{n:03d}-Guys-{n:04d}-T1.nii.gz"))
    nib.save(nib.Nifti1Image(volume(9), AFFINE), str(tmp_path / "IXI009-Guys-0009-T2.nii.gz"))  # not T1: ignored
    return tmp_path


def config(root, **kw):
    base = dict(source="ixi", root=str(root), image_size=(8, 10, 16), spacing=2.0, clip_percentiles=(0.5, 99.5),
                seed=0, fractions=(0.6, 0.2, 0.2))
    return ml_collections.ConfigDict({**base, **kw})


def test_ras_spacing_crop_pad_and_normalisation(root):
    src = pipeline.get_source(config(root), "train")
    ex = src[0]
    image, affine = ex["image"][..., 0], ex["affine"].astype(np.float64)
    assert ex["image"].shape == (8, 10, 16, 1) and image.dtype == np.float32 and affine.shape == (4, 4)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), 2.0)
    assert image.min() == -1.0 and image.max() == 1.0
    # at 2 mm the volume is 10 x 9 x 7 voxels: x cropped (10 -> 8), y padded 1 + 0, z padded 5 + 4 with -1
    assert np.all(image[:, 0] == -1.0) and np.all(image[:, :, :5] == -1.0) and np.all(image[:, :, -4:] == -1.0)
    assert np.mean(image[:, 1:, 5:12] > -1.0) > 0.95                # inside: data (only the 0.5 % tail is -1)
    # the bright block lies at the same world position as in the file
    world = AFFINE @ np.array([MARK[0] + 1, MARK[1] + 1, MARK[2] + 1, 1.0])
    bright = np.argwhere(image > 0.9)
    assert 0 < len(bright) < 40
    np.testing.assert_allclose(bright.mean(0), np.linalg.solve(affine, world)[:3], atol=0.75)


def test_percentile_clip_keeps_the_scale_despite_an_outlier():
    v = np.linspace(0.0, 100.0, 1000).astype(np.float32)
    v[17] = 1e6
    out = ixi.clip_normalise(v, (0.5, 99.5))
    assert out[17] == 1.0 and out.min() == -1.0
    assert abs(out[500]) < 0.05                              # the middle intensity maps near 0, not near -1


def test_case_split_is_disjoint_and_complete(root):
    cases = [set(int(pipeline.get_source(config(root), s)[i]["case"]) for i in range(len(
        pipeline.get_source(config(root), s)))) for s in ("train", "val", "test")]
    assert sum(len(c) for c in cases) == 5 and set.union(*cases) == set(range(5))
    assert len(ixi.IxiVolumes(str(root), "train", shape=(8, 8, 8), spacing=(2, 2, 2)).files) == 5


def test_patches_from_ixi_have_region_labels(root):
    src = pipeline.get_source(config(root, patch_size=(4, 4, 8), patches_per_volume=3), "train")
    ex = src[2]
    assert ex["image"].shape == (4, 4, 8, 1) and 0 <= int(ex["label"]) < 8
    np.testing.assert_allclose(ex["affine"][:3, 3], src.volumes[0]["affine"][:3, :3] @ ex["origin"]
                               + src.volumes[0]["affine"][:3, 3], atol=1e-4)


def test_errors_name_the_file_or_key(root, tmp_path_factory):
    bad = root / "IXI777-HH-0777-T1.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    src = ixi.IxiVolumes(str(root), "train", shape=(8, 8, 8), spacing=(2, 2, 2), fractions=(1, 0, 0))
    with pytest.raises(InputError, match="IXI777-HH-0777-T1.nii.gz"):
        [src[i] for i in range(len(src))]
    with pytest.raises(InputError, match="data.root"):
        pipeline.get_source(config(tmp_path_factory.mktemp("empty")), "train")
    with pytest.raises(InputError, match="data.clip_percentiles"):
        pipeline.get_source(config(root, clip_percentiles=(99.0, 1.0)), "train")
