"""Tasks on tiny models: segmentation diffusion (ensembles, fusion), supervised segmentation (S0 loss with the
error VAE), generation (class conditioning)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdiff import tasks
from jaxdiff.tasks.segmentation_diffusion import fuse


def _train_block():
    return ml_collections.ConfigDict(dict(steps=10, batch_size=4, lr=1e-3, precision="fp32", ema=0.0))


def msd_config(ensemble=3, fusion="mean"):
    c = ml_collections.ConfigDict()
    c.seed, c.task = 0, "segmentation_diffusion"
    c.model = ml_collections.ConfigDict(dict(name="medsegdiff", image_size=16, image_channels=2, first_conv_channels=8,
                                             num_layers=2, time_embedding_dim=32, attention_resolutions=(8,)))
    c.diffusion = ml_collections.ConfigDict(dict(schedule="cosine", num_timesteps=20, sampler="ddim", sample_steps=4,
                                                 eta=0.0, ensemble=ensemble, fusion=fusion, clip_x0=1.0))
    c.data = ml_collections.ConfigDict(dict(image_size=16, channels=2))
    c.train = _train_block()
    return c


def test_fusion_mean_and_official_staple():
    p = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 2, 4, 4, 1)), jnp.float32)
    np.testing.assert_allclose(fuse(p, "mean"), p.mean(0), rtol=1e-6)
    np.testing.assert_allclose(fuse(p, "staple"), p.mean(0) ** 2, rtol=1e-5)  # mean(p_i * mean) = mean^2


def test_ensemble_is_one_batched_scan_and_outputs_are_consistent():
    task = tasks.build(msd_config(ensemble=3))
    batch = task.example_batch(2)
    variables = task.init(jax.random.PRNGKey(0), batch)
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 2)), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda v, x: task.predict(v, x, jax.random.PRNGKey(0)))(variables, images)
    assert str(jaxpr).count("scan[") == 1
    out = task.predict(variables, images, jax.random.PRNGKey(2))
    assert out["samples"].shape == (3, 2, 16, 16, 1) and out["prob"].shape == (2, 16, 16, 1)
    np.testing.assert_allclose(out["variance"], np.var(np.asarray(out["samples"]), axis=0), atol=1e-6)
    assert set(np.unique(np.asarray(out["pred"]))) <= {0.0, 1.0}
    assert float(jnp.min(out["prob"])) >= 0.0 and float(jnp.max(out["prob"])) <= 1.0


def test_segmentation_diffusion_loss_trains():
    task = tasks.build(msd_config())
    rng = np.random.default_rng(0)
    mask = (rng.uniform(size=(4, 16, 16, 1)) > 0.7).astype(np.float32)
    batch = {"image": np.concatenate([mask, -mask], -1) * 2 - 1, "mask": mask}
    params = task.init(jax.random.PRNGKey(0), batch)["params"]
    opt = optax.adam(3e-3)
    state = opt.init(params)
    grad = jax.jit(jax.value_and_grad(lambda p, k: task.loss(p, {}, batch, k)[0]))
    losses = []
    for i in range(30):
        loss, g = grad(params, jax.random.PRNGKey(i % 3))
        upd, state = opt.update(g, state)
        params = optax.apply_updates(params, upd)
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def s0_config(error_head=True, out_channels=1):
    c = ml_collections.ConfigDict()
    c.seed, c.task = 0, "segmentation"
    c.model = ml_collections.ConfigDict(dict(name="transformer_unet", widths=(4, 8, 8, 16, 16), num_heads=2, ff_dim=16,
                                             out_channels=out_channels))
    c.error_head = ml_collections.ConfigDict(dict(name="vae_error_head" if error_head else ""))
    c.loss = ml_collections.ConfigDict(dict(error_weight=0.5, kl_weight=0.0, dice_weight=0.0))
    c.data = ml_collections.ConfigDict(dict(image_size=32, channels=1))
    c.train = _train_block()
    return c


def test_s0_loss_is_bce_plus_half_error_mse():
    task = tasks.build(s0_config())
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32),
             "mask": (rng.uniform(size=(2, 32, 32, 1)) > 0.5).astype(np.float32)}
    variables = task.init(jax.random.PRNGKey(0), batch)
    assert set(variables["params"]) == {"segmenter", "error_head"}

    @jax.jit  # one compilation instead of op-by-op dispatch
    def loss_and_outputs(variables, batch):
        loss, _ = task.loss(variables["params"], {"batch_stats": variables["batch_stats"]}, batch,
                            jax.random.PRNGKey(0), train=False)
        return loss, task.apply(variables, batch["image"], batch["mask"])

    loss, (logits, (err, recon, _, _)) = loss_and_outputs(variables, batch)
    bce = optax.sigmoid_binary_cross_entropy(logits, batch["mask"]).mean()
    np.testing.assert_allclose(float(loss), float(bce + 0.5 * jnp.mean((recon - err) ** 2)), rtol=1e-5)
    np.testing.assert_allclose(err, jnp.abs(logits - batch["mask"]), rtol=1e-6)
    assert task.counted_params(variables["params"]) is variables["params"]["segmenter"]


def test_two_class_softmax_segmenter_probability():
    task = tasks.build(s0_config(error_head=False, out_channels=2))
    logits = jnp.asarray([[[[0.0, 2.0]]]])
    np.testing.assert_allclose(task.probability(logits)[..., 0], jax.nn.softmax(logits)[..., 1], rtol=1e-6)


def test_generation_drops_labels_for_guidance():
    c = ml_collections.ConfigDict()
    c.seed, c.task = 0, "generation"
    c.model = ml_collections.ConfigDict(dict(name="unet", base_channels=8, channel_mults=(1,), attention_levels=(),
                                             groups=4, num_classes=3))
    c.diffusion = ml_collections.ConfigDict(dict(schedule="linear", num_timesteps=10, cond_drop=0.5))
    c.data = ml_collections.ConfigDict(dict(image_size=8, channels=1))
    c.train = _train_block()
    task = tasks.build(c)
    labels = task._cond({"label": jnp.zeros((1000,), jnp.int32)}, jax.random.PRNGKey(0))["label"]
    assert set(np.unique(np.asarray(labels))) == {0, 3}
    assert abs(float(jnp.mean(labels == 3)) - 0.5) < 0.05


@pytest.mark.parametrize("bad", [dict(task="nope"), dict(precision="fp8")])
def test_bad_task_config_names_the_key(bad):
    from jaxdiff.errors import InputError
    c = msd_config()
    if "task" in bad:
        c.task = bad["task"]
    else:
        c.train.precision = bad["precision"]
    with pytest.raises(InputError, match="task|train.precision"):
        tasks.build(c)
