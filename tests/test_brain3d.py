"""3D brain generation (seed S2): remat and chunked attention exactness, classifier-free guidance at scale 1,
NIfTI orientation round trip, region-labelled patches, and (slow) the tiny config end to end."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import nibabel as nib
import numpy as np
import pytest

from jaxdiff.data import pipeline
from jaxdiff.diffusion import samplers, schedules
from jaxdiff.errors import InputError
from jaxdiff.io import nifti
from jaxdiff.models.unet import UNet, remat_blocks

T = np.array([5, 900], np.int32)


def unet3d(**kw):
    """One-level 3D UNet with global attention (8^3 input: 512 positions) and 3 region labels."""
    return UNet(**{**dict(base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_levels=(0,),
                          num_heads=2, groups=4, time_dim=16, num_classes=3, dims=3), **kw})


def random_params(model, x, cond):
    """Gaussian parameters of the model's shapes (no init compile; zero-initialised convs would hide effects)."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, T[: len(x)], cond)
    return jax.tree.map(lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype), shapes)


def test_remat_and_chunked_attention_change_neither_loss_nor_gradients():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 8, 1)), jnp.float32)
    cond = {"label": jnp.array([0, 2], jnp.int32)}
    plain = unet3d(dropout=0.2)
    other = unet3d(dropout=0.2, remat=("res", "attn"), attention_chunk=96)   # 512 = 5 x 96 + 32: padded chunk
    v = random_params(plain, x, cond)
    models = [unet3d(remat=r) for r in ("res", "attn", True)]
    regions = [str(jax.make_jaxpr(lambda p, m=m: m.apply(p, x, T, cond))(v)).count("remat") for m in models]
    assert regions == [5, 4, 5 + 4]                           # 5 ResBlocks, 4 attention blocks recomputed

    def loss_grad(model):
        def loss(p):
            y = model.apply({"params": p}, x, T, cond, train=True, rngs={"dropout": jax.random.key(3)})
            return jnp.mean(y ** 2)
        return jax.jit(jax.value_and_grad(loss))(v["params"])

    (l0, g0), (l1, g1) = loss_grad(plain), loss_grad(other)
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)
    assert np.abs(np.asarray(g0["label_embed"]["embedding"])).max() > 0


def test_remat_option_values():
    assert remat_blocks(True) == {"res", "attn"} and remat_blocks(False) == frozenset()
    assert remat_blocks("res, attn") == remat_blocks(("attn", "res")) == {"res", "attn"}
    assert remat_blocks("none") == remat_blocks(()) == frozenset()
    with pytest.raises(InputError, match="model.remat"):
        remat_blocks(("res", "mlp"))


def test_guidance_scale_one_equals_conditional_model():
    x = jnp.zeros((2, 8, 8, 8, 1), jnp.float32)
    model = unet3d()
    cond, null = {"label": jnp.array([0, 1], jnp.int32)}, {"label": jnp.full((2,), 3, jnp.int32)}
    v = random_params(model, x, cond)
    fn = lambda x_t, t, c: model.apply(v, x_t, t, c)       # noqa: E731
    sched = schedules.get("linear", num_timesteps=1000, beta_start=1e-4, beta_end=0.02)

    @jax.jit
    def draw(scale):          # one compile: s enters the scan as data; no guidance = conditional model alone
        guided = samplers.ddim_sample(fn, sched, x.shape, jax.random.key(0), num_steps=3, cond=cond, uncond=null,
                                      guidance_scale=scale)
        plain = samplers.ddim_sample(fn, sched, x.shape, jax.random.key(0), num_steps=3, cond=cond)
        return guided, plain

    guided, conditional = draw(1.0)
    np.testing.assert_allclose(guided, conditional, atol=1e-5)
    assert np.abs(np.asarray(draw(3.0)[0]) - np.asarray(conditional)).max() > 1e-3


def test_nifti_round_trip_keeps_affine_and_orientation(tmp_path):
    vol = np.zeros((6, 7, 5), np.float32)
    vol[1, 5, 3] = 1.0                                                  # one marked voxel, asymmetric
    ras = np.array([[1.2, 0, 0, -30.0], [0, 1.0, 0, 12.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    data, affine = nifti.load_nifti(nifti.save_nifti(str(tmp_path / "ras.nii.gz"), vol[..., None], ras))
    np.testing.assert_array_equal(data, vol)
    np.testing.assert_allclose(affine, ras)
    # stored as P-S-L (array axes i, j, k run toward posterior, superior, left): read back as RAS, with the
    # marked voxel at the same world position
    las = np.array([[0, 0, -2.0, 40.0], [-1.2, 0, 0, 20.0], [0, 1.0, 0, -8.0], [0, 0, 0, 1]])
    path = nifti.save_nifti(str(tmp_path / "psl.nii.gz"), vol, las)
    assert nib.aff2axcodes(nib.load(path).affine) == ("P", "S", "L")
    data, affine = nifti.load_nifti(path)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    world = las @ np.array([1, 5, 3, 1.0])
    voxel = np.argwhere(data == 1.0)[0]
    np.testing.assert_allclose(affine @ np.append(voxel, 1.0), world)


class Volumes:
    """Two 12 x 10 x 8 volumes whose voxel value encodes its (x, y, z), with a non-identity affine."""
    affine = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 4], [0, 0, 3.0, 7], [0, 0, 0, 1]], np.float32)

    def __len__(self):
        return 2

    def __getitem__(self, i):
        x, y, z = np.meshgrid(*[np.arange(n) for n in (12, 10, 8)], indexing="ij")
        return {"image": (10000 * i + 100 * x + 10 * y + z).astype(np.float32)[..., None],
                "affine": self.affine.copy(), "case": np.int32(i)}


def test_patch_labels_deterministic_and_correct():
    source = pipeline.PatchSource(Volumes(), (4, 6, 8), patches_per_volume=5, seed=(7,))
    assert len(source) == 10
    labels = set()
    for j in range(len(source)):
        ex = source[j]
        o = ex["origin"]
        assert ex["image"].shape == (4, 6, 8, 1)
        assert ex["image"][0, 0, 0, 0] == 10000 * (j // 5) + 100 * o[0] + 10 * o[1] + o[2]
        bits = [o[0] + 2 > 6, o[1] + 3 > 5, 0]                 # patch centre past the middle; z spans all 8
        assert ex["label"] == 4 * bits[0] + 2 * bits[1] + bits[2]
        np.testing.assert_allclose(ex["affine"][:3, 3], Volumes.affine[:3, :3] @ o + Volumes.affine[:3, 3])
        labels.add(int(ex["label"]))
        again = pipeline.PatchSource(Volumes(), (4, 6, 8), patches_per_volume=5, seed=(7,))[j]
        np.testing.assert_array_equal(again["image"], ex["image"])
    assert len(labels) > 1
    for label in range(8):                      # each region's representative origin carries that label
        start = pipeline.region_start(label, (4, 6, 4), (12, 10, 8))
        assert pipeline.region_label(start, (4, 6, 4), (12, 10, 8)) == label
    with pytest.raises(InputError, match="data.patch_size"):
        pipeline.PatchSource(Volumes(), (4, 6, 9))


def test_get_source_serves_phantom3d_patches():
    d = ml_collections.ConfigDict(dict(source="phantom3d", image_size=16, patch_size=8, patches_per_volume=2,
                                       num_cases=3, tumour_fraction=0.0, fractions=(0.34, 0.33, 0.33)))
    src = pipeline.get_source(d, "train")
    ex = src[1]
    assert ex["image"].shape == (8, 8, 8, 1) and ex["label"].dtype == np.int32 and 0 <= ex["label"] < 8
    whole = src.volumes[0]
    o = ex["origin"]
    np.testing.assert_array_equal(ex["image"], whole["image"][o[0]:o[0] + 8, o[1]:o[1] + 8, o[2]:o[2] + 8])
    assert not np.allclose(whole["affine"], np.eye(4))


@pytest.mark.slow
@pytest.mark.long  # minutes on a 2-core host; in CI; `pytest -m "not long"` skips it locally
def test_tiny_config_trains_and_samples_nifti_with_data_affine(tmp_path):
    from tests.conftest import run_python
    work = str(tmp_path / "w")
    r = run_python(["-m", "jaxdiff.train", "--config", "configs/brain3d_tiny.py", "--workdir", work,
                    "--config.train.steps=2", "--config.diffusion.sample_steps=2"], timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(os.path.join(work, "report.json")) as f:
        report = json.load(f)
    assert report["feature_mmd_random_conv3d"] > 0 and 0 < report["ms_ssim_real"] <= 1  # 2 samples, 2 real volumes: similar, never 0
    out = str(tmp_path / "out")
    r = run_python(["-m", "jaxdiff.sample", "--workdir", work, "--num", "2", "--steps", "2", "--out", out,
                    "--cpu_devices", "2"], timeout=1800)  # one volume per CPU device
    assert r.returncode == 0, r.stderr[-2000:]
    written = json.loads(r.stdout.strip().splitlines()[-1])["written"]
    d = ml_collections.ConfigDict(dict(source="phantom3d", image_size=32, num_cases=16, tumour_fraction=0.0))
    data_affine = pipeline.get_source(d, "val")[0]["affine"]
    img = nib.load(os.path.join(out, "sample_000.nii.gz"))
    assert img.shape == (32, 32, 32)
    np.testing.assert_allclose(img.affine, data_affine, atol=1e-5)
    assert not np.allclose(img.affine, np.eye(4))
    for name in ("sample_000_montage.png", "real_vs_generated.png", "diffusion_process.png", "sample_000.html"):
        assert os.path.join(out, name) in written and os.path.getsize(os.path.join(out, name)) > 1000
