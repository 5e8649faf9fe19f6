"""Seed S4's 512 U-Net: exact parameter counts (hand formula, and the well-known Keras summary of this U-Net),
output shapes, and the segmentation task's 2-class softmax cross-entropy on it."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from configs import unet512_seg, unet512_seg_tiny
from jaxdiff import tasks
from jaxdiff.models.unet512 import UNet512
from jaxdiff.summary import count

KEY = jax.random.key(0)
FAST_KEY = jax.random.key(0, impl="unsafe_rbg")   # XLA's RngBitGenerator: compiles in a fraction of threefry's time


def conv_bn_relu2(cin: int, w: int) -> tuple[int, int]:
    """(trainable, BatchNorm statistics) of (conv3x3 with bias -> BN scale/offset -> ReLU) x 2."""
    return 9 * cin * w + w + 2 * w + 9 * w * w + w + 2 * w, 4 * w


def expected_params(in_ch: int, widths, classes: int) -> tuple[int, int]:
    """(trainable, BatchNorm statistics) of the U-Net, walked level by level."""
    total = stats = 0
    c = in_ch
    for w in widths:                                      # encoder blocks, then the bridge
        p, s = conv_bn_relu2(c, w)
        total, stats, c = total + p, stats + s, w
    for w in reversed(widths[:-1]):                       # 2x2 transposed conv, concat skip, block
        p, s = conv_bn_relu2(2 * w, w)
        total, stats, c = total + 4 * c * w + w + p, stats + s, w
    return total + c * classes + classes, stats


def shapes(model, in_ch: int, size: int = 32):
    return jax.eval_shape(model.init, KEY, jnp.zeros((1, size, size, in_ch)))


def test_seed_parameter_count():
    model = UNet512(**{k: v for k, v in dict(unet512_seg.get_config().model).items() if k != "name"})
    v = shapes(model, 1)
    assert (count(v["params"]), count(v["batch_stats"])) == expected_params(1, (64, 128, 256, 512, 1024), 2)
    assert count(v["params"]) == 31_042_434
    # The Keras U-Net with these widths (RGB in, one sigmoid output) is summarised as 31,055,297 total
    # (31,043,521 trainable + 11,776 BatchNorm statistics): the formula agrees.
    trainable, bn_stats = expected_params(3, (64, 128, 256, 512, 1024), 1)
    assert (trainable, bn_stats, trainable + bn_stats) == (31_043_521, 11_776, 31_055_297)


def test_tiny_count_and_shapes():
    model = UNet512(widths=(2, 4, 8), num_classes=2)
    v = shapes(model, 3, 16)
    assert (count(v["params"]), count(v["batch_stats"])) == expected_params(3, (2, 4, 8), 2)
    x = jax.random.normal(KEY, (2, 16, 16, 3))
    logits = jax.jit(lambda x: model.apply(model.init(FAST_KEY, x), x))(x)
    assert logits.shape == (2, 16, 16, 2) and np.all(np.isfinite(np.asarray(logits)))


def test_segmentation_task_two_class_softmax_loss():
    c = unet512_seg_tiny.get_config()
    c.model.widths = (2, 4, 8)
    c.data.image_size = 16
    c.loss.dice_weight = 0.0                               # the seed's loss: cross-entropy only
    task = tasks.build(c)
    batch = task.example_batch(2)
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, batch["image"].shape).astype(np.float32),
             "mask": (rng.uniform(size=batch["mask"].shape) < 0.3).astype(np.float32)}
    sh = jax.eval_shape(task.init, KEY, batch)
    params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), sh["params"])
    head = params["segmenter"]["head"]                    # constant logits (0, 1) at every pixel
    head["kernel"], head["bias"] = jnp.zeros_like(head["kernel"]), jnp.array([0.0, 1.0])
    state = {"batch_stats": jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.full(a.shape, float(path[-1].key == "var"), a.dtype), sh["batch_stats"])}
    loss, (metrics, new_state) = jax.jit(task.loss, static_argnums=4)(params, state, batch, FAST_KEY, True)
    frac = batch["mask"].mean()                            # CE: -log softmax(0, 1)[label]
    want = frac * math.log1p(math.exp(-1.0)) + (1 - frac) * math.log1p(math.exp(1.0))
    assert np.isfinite(float(loss)) and float(loss) == float(metrics["seg_loss"])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    moved = new_state["batch_stats"]["segmenter"]["enc0"]["bn1"]["mean"]
    assert float(jnp.abs(moved).sum()) > 0                 # train mode updates the running statistics
