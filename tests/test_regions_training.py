"""Region-based BraTS training (`data.regions="brats"`): nested WT / TC / ET mask channels from the slice sources,
K-sigmoid S0 loss (BCE + soft Dice per region), the 3-channel MedSegDiff mask, a few train steps of each tiny
region config, and the region -> label rule of `jaxdiff.inference.labels_from_probabilities`."""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from jaxdiff import tasks
from jaxdiff import config as config_lib
from jaxdiff.data import pipeline
from jaxdiff.data.sources import axial_slices, region_masks
from jaxdiff.data.sources import phantom
from jaxdiff.errors import InputError
from jaxdiff.inference import labels_from_probabilities

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGION_CONFIGS = ("transformer_unet_tiny_regions", "medsegdiff_tiny_regions")


def config(name: str, *overrides):
    """The config file `configs/<name>.py` as the command line reads it, with `--config.k=v` overrides."""
    return config_lib.parse(["train", "--config", os.path.join(REPO, "configs", f"{name}.py"), *overrides])[0]


# --- data: nested region channels -------------------------------------------------------------------------------
def test_axial_slices_region_channels_match_labels_unresized():
    seg = np.random.default_rng(0).choice(np.array([0, 1, 2, 4], np.uint8), size=(12, 12, 3))
    vol = np.zeros(seg.shape, np.float32)
    _, masks = axial_slices([vol], seg, [0, 2], 12, regions="brats")
    assert masks.shape == (2, 12, 12, 3) and masks.dtype == np.float32
    labels = np.rot90(seg[:, :, [0, 2]], axes=(0, 1)).transpose(2, 0, 1)
    np.testing.assert_array_equal(masks[..., 0], labels > 0)                       # WT = {1, 2, 4}
    np.testing.assert_array_equal(masks[..., 1], np.isin(labels, (1, 4)))          # TC = {1, 4}
    np.testing.assert_array_equal(masks[..., 2], labels == 4)                      # ET = {4}
    _, whole = axial_slices([vol], seg, [0, 2], 12)
    assert whole.shape == (2, 12, 12, 1)
    np.testing.assert_array_equal(whole[..., 0], masks[..., 0])


def test_phantom_region_masks_are_the_case_labels_and_stay_nested_when_resized():
    kw = dict(num_cases=10, slices_per_case=4, modality="t1ce,flair,t2", tumour_only=True, seed=3)
    native = phantom.PhantomSlices("train", image_size=96, regions="brats", **kw)      # 96 x 96: no zoom
    case = native.cases[0]
    plan = phantom._plan(case, 3, phantom.DEFAULT_SHAPE, phantom.DEFAULT_VOXEL_MM, 0.8)
    ks = phantom._choose_slices(plan, 4, True)
    seg = np.rot90(phantom._render(plan, ks, ("t2",))["seg"], axes=(0, 1)).transpose(2, 0, 1)
    masks = np.stack([native[i]["mask"] for i in range(4)])
    assert masks.shape == (4, 96, 96, 3) and native[0]["image"].shape == (96, 96, 3)
    np.testing.assert_array_equal(masks, region_masks(seg, "brats"))
    assert masks[..., 2].any() and (masks[..., 1] > masks[..., 2]).any() and (masks[..., 0] > masks[..., 1]).any()

    small = phantom.PhantomSlices("train", image_size=32, regions="brats", **kw)
    whole = phantom.PhantomSlices("train", image_size=32, **kw)
    m = np.stack([small[i]["mask"] for i in range(len(small))])
    assert m.shape[1:] == (32, 32, 3) and set(np.unique(m)) <= {0.0, 1.0} and m[..., 2].any()
    assert np.all(m[..., 2] <= m[..., 1]) and np.all(m[..., 1] <= m[..., 0])          # ET <= TC <= WT
    np.testing.assert_array_equal(m[..., :1], np.stack([whole[i]["mask"] for i in range(len(whole))]))


def test_augmentation_moves_region_channels_together():
    from jaxdiff.data.transforms import augment
    rng = np.random.default_rng(1)
    seg = np.zeros((24, 24), np.uint8)
    seg[4:20, 3:18], seg[7:15, 6:14], seg[9:12, 8:11] = 2, 1, 4
    example = {"image": rng.uniform(-1, 1, (24, 24, 2)).astype(np.float32), "mask": region_masks(seg, "brats")}
    for i in range(6):
        out = augment(example, np.random.default_rng(i), elastic=1.0, elastic_alpha=40.0, elastic_sigma=3.0)
        m = out["mask"]
        assert m.shape == (24, 24, 3) and set(np.unique(m)) <= {0.0, 1.0}
        assert np.all(m[..., 2] <= m[..., 1]) and np.all(m[..., 1] <= m[..., 0])


def test_regions_key_is_checked_and_read_from_the_command_line():
    c = config("medsegdiff_tiny", "--config.data.regions=brats", "--config.model.mask_channels=3")
    assert c.data.regions == "brats" and pipeline.raw_source(c.data, "val")[0]["mask"].shape == (32, 32, 3)
    with pytest.raises(InputError, match="data.regions"):
        pipeline.raw_source(config("medsegdiff_tiny", "--config.data.regions=wt").data, "val")
    with pytest.raises(InputError, match="data.regions"):     # a source without BraTS labels
        pipeline.raw_source(ml_collections.ConfigDict(dict(source="lgg", regions="brats")), "train")
    with pytest.raises(InputError, match="model.mask_channels"):   # 3 regions, a 1-channel denoiser
        tasks.build(config("medsegdiff_tiny", "--config.data.regions=brats"))
    with pytest.raises(InputError, match="model.out_channels"):
        tasks.build(config("transformer_unet_tiny_regions", "--config.model.out_channels=1"))


# --- tasks ------------------------------------------------------------------------------------------------------
def fixed_batch(c, n: int = 4) -> dict:
    """The n training slices of the config's source with the largest tumour core (so every region is present)."""
    c.data.num_cases = 12
    source = pipeline.raw_source(c.data, "train")
    examples = [source[i] for i in range(len(source))]
    examples.sort(key=lambda e: -float(e["mask"][..., 1].sum()))
    return {k: np.stack([e[k] for e in examples[:n]]) for k in ("image", "mask")}


def test_s0_region_loss_is_per_region_bce_plus_soft_dice():
    c = config("transformer_unet_tiny_regions", "--config.error_head.name=",   # the segmenter's loss alone
               "--config.data.image_size=32")
    task = tasks.build(c)
    batch = fixed_batch(c, 2)
    assert task.example_batch(2)["mask"].shape == batch["mask"].shape == (2, 32, 32, 3)
    variables = task.init(jax.random.PRNGKey(0), batch)

    @jax.jit  # one compilation instead of op-by-op dispatch
    def outputs(variables):
        state = {"batch_stats": variables["batch_stats"]}
        loss, (metrics, _) = task.loss(variables["params"], state, batch, jax.random.PRNGKey(0), train=False)
        return loss, metrics, task.apply(variables, batch["image"], batch["mask"])[0], task.predict(variables,
                                                                                                    batch["image"])

    loss, metrics, logits, out = outputs(variables)
    logits, mask = np.asarray(logits, np.float64), batch["mask"].astype(np.float64)
    assert logits.shape == (2, 32, 32, 3)
    prob = 1.0 / (1.0 + np.exp(-logits))                                     # one sigmoid per region, not softmax
    bce = [np.mean(optax.sigmoid_binary_cross_entropy(logits[..., r], mask[..., r])) for r in range(3)]
    inter, total = (prob * mask).sum((1, 2)), prob.sum((1, 2)) + mask.sum((1, 2))   # (B, 3)
    dice = np.mean(1.0 - (2.0 * inter + 1.0) / (total + 1.0), axis=0)               # per region
    np.testing.assert_allclose(float(metrics["seg_loss"]), np.mean(bce), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["dice_loss"]), np.mean(dice), rtol=1e-5)
    np.testing.assert_allclose(float(loss), np.mean(bce) + np.mean(dice), rtol=1e-5)
    np.testing.assert_allclose(out["prob"], prob, rtol=1e-5, atol=1e-6)
    pred = np.asarray(out["pred"])
    assert np.all(pred[..., 2] <= pred[..., 1]) and np.all(pred[..., 1] <= pred[..., 0])


@pytest.mark.parametrize("name", REGION_CONFIGS)
def test_tiny_region_config_trains_on_a_fixed_batch(name):
    from jaxdiff.training import sharding as shd
    from jaxdiff.training.state import make_optimizer
    from jaxdiff.training.step import compile_train_step, init_state
    c = config(name, "--config.train.batch_size=4", "--config.train.warmup_steps=0",
               "--config.train.lr_schedule=constant", "--config.train.ema=0.0", "--config.data.image_size=32")
    task = tasks.build(c)
    batch = fixed_batch(c, 4)
    assert batch["mask"].shape[-1] == 3 and batch["mask"][..., 2].any()
    mesh = shd.make_mesh(c.mesh)
    state, shardings = init_state(task, make_optimizer(c.train), jax.random.PRNGKey(0),
                                  shd.global_batch(task.example_batch(4), mesh), mesh)
    step = compile_train_step(task, c.train, mesh, shardings)
    losses = []
    for _ in range(8):       # the same batch and step rng each time: the same noise and t for MedSegDiff
        state, m = step(state, shd.global_batch(batch, mesh), jax.random.PRNGKey(1))
        losses.append(float(jax.device_get(m["loss"])))
    assert np.all(np.isfinite(losses)), losses
    assert np.mean(losses[-2:]) < 0.95 * np.mean(losses[:2]) and losses[-1] < min(losses[:4]), losses
    if name.startswith("medsegdiff"):
        out = task.predict(state.variables(ema=False), batch["image"][:2], jax.random.PRNGKey(2), ensemble=2,
                           num_steps=2)
        assert out["prob"].shape == (2, 32, 32, 3) and out["samples"].shape == (2, 2, 32, 32, 3)
        pred = np.asarray(out["pred"])
        assert np.all(pred[..., 2] <= pred[..., 1]) and np.all(pred[..., 1] <= pred[..., 0])


# --- labels from region probabilities ---------------------------------------------------------------------------
def test_labels_from_region_probabilities_round_trip():
    c = ml_collections.ConfigDict(dict(data=dict(regions="brats")))
    rng = np.random.default_rng(0)
    seg = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(9, 10, 11))
    regions = region_masks(seg, "brats")
    prob = np.clip(regions * 0.8 + 0.1 + rng.uniform(-0.09, 0.09, regions.shape), 0, 1)
    labels = labels_from_probabilities(prob, c)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, seg)
    # nesting enforced: ET outside TC is not enhancing tumour; TC outside WT is nothing
    np.testing.assert_array_equal(labels_from_probabilities(np.array([[0.9, 0.2, 0.9], [0.2, 0.9, 0.9]]), c),
                                  [2, 0])
    c2023 = ml_collections.ConfigDict(dict(data=dict(regions="brats2023")))
    np.testing.assert_array_equal(labels_from_probabilities(prob, c2023), np.where(seg == 4, 3, seg))
    np.testing.assert_array_equal(labels_from_probabilities(prob[..., :1], c), seg > 0)   # one channel: label 1
    with pytest.raises(InputError):
        labels_from_probabilities(prob, ml_collections.ConfigDict(dict(data=dict(regions=None))))


# --- parameter counts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("transformer_unet_brats", 49_455_873), ("medsegdiff_seed", 405_041), ("medsegdiff_tiny", 406_577),
    ("medsegdiff_phantom", 406_577), ("transformer_unet_tiny_regions", 409_907),
    ("medsegdiff_tiny_regions", 408_179), ("transformer_unet_brats_regions", 49_457_283)])
def test_parameter_counts(name, expected):
    from jaxdiff.summary import count
    task = tasks.build(config(name))
    variables = jax.eval_shape(task.init, jax.random.PRNGKey(0), task.example_batch(1))
    params = task.counted_params(variables["params"]) if hasattr(task, "counted_params") else variables["params"]
    assert count(params) == expected
    if name == "transformer_unet_brats_regions":     # the original's layers, but 3 input channels and 3 logits
        assert count(params["final"]) == 65 + 130 and count(params["enc1"]) == 38_464 + 1_280
