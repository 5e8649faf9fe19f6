"""Seed S4's Keras DDIM denoiser: noise-variance embedding, t -> variance conversion against the cosine-angle
schedule, exact parameter counts, zero output at init, and one train-mode loss/gradient through the generation
task (BatchNorm statistics update)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import keras_ddim, keras_ddim_tiny
from jaxdiff import tasks
from jaxdiff.diffusion import schedules
from jaxdiff.models.keras_ddim import KerasDDIM, noise_embedding, noise_variance
from jaxdiff.summary import count

KEY = jax.random.key(0)
FAST_KEY = jax.random.key(0, impl="unsafe_rbg")   # XLA's RngBitGenerator: compiles in a fraction of threefry's time


def res_block_params(cin: int, width: int) -> int:
    """Trainable parameters of a Keras residual block: two 3x3 convs (+ a 1x1 skip conv when widths differ);
    the BatchNorm has neither scale nor centre."""
    skip = cin * width + width if cin != width else 0
    return skip + 9 * cin * width + width + 9 * width * width + width


def expected_params(in_ch: int, out_ch: int, widths, depth: int, emb: int = 32) -> tuple[int, int]:
    """(trainable parameters, BatchNorm statistics) of the network, walked as the Keras example builds it."""
    total, stats = in_ch * widths[0] + widths[0], 0
    c, skips = widths[0] + emb, []
    for w in widths[:-1]:
        for _ in range(depth):
            total, stats, c = total + res_block_params(c, w), stats + 2 * c, w
            skips.append(c)
    for _ in range(depth):
        total, stats, c = total + res_block_params(c, widths[-1]), stats + 2 * c, widths[-1]
    for w in reversed(widths[:-1]):
        for _ in range(depth):
            cin = c + skips.pop()
            total, stats, c = total + res_block_params(cin, w), stats + 2 * cin, w
    return total + c * out_ch + out_ch, stats


def test_embedding_is_the_keras_formula():
    v = np.array([0.0, 0.25, 0.731], np.float32)
    f = np.exp(np.linspace(np.log(1.0), np.log(1000.0), 16))
    want = np.concatenate([np.sin(2 * np.pi * f * v[:, None]), np.cos(2 * np.pi * f * v[:, None])], axis=1)
    got = np.asarray(noise_embedding(v, 32, 1.0, 1000.0))
    low = np.r_[0:8, 16:24]                 # frequencies <= 25 cycles: float32 angles good to ~5e-5
    np.testing.assert_allclose(got[:, low], want[:, low], atol=1e-4)
    np.testing.assert_allclose(got, want, atol=5e-3)   # angles up to 2 pi 1000 v lose ~1e-3 in float32 (as Keras)
    assert got.shape == (3, 32) and got[1, 0] == pytest.approx(1.0) and got[0, 16:].min() == 1.0


@pytest.mark.parametrize("T", [20, 1000])
def test_t_to_noise_variance_matches_the_cosine_angle_schedule(T):
    sched = schedules.get("cosine_angle", num_timesteps=T)
    var = np.asarray(noise_variance(jnp.arange(T), T))
    np.testing.assert_allclose(var, 1.0 - np.asarray(sched.alphas_cumprod), atol=2e-6)
    # The last step is diffusion time 1: the example's min signal rate 0.02.
    assert var[-1] == pytest.approx(1.0 - 0.02 ** 2, abs=1e-6)
    start = math.acos(0.95) + (math.acos(0.02) - math.acos(0.95)) / T
    assert var[0] == pytest.approx(math.sin(start) ** 2, abs=1e-6)


@pytest.mark.parametrize("in_ch", [1, 3])
def test_full_size_parameter_count(in_ch):
    cfg = {k: v for k, v in dict(keras_ddim.get_config().model).items() if k not in ("name", "out_channels")}
    model = KerasDDIM(**cfg, out_channels=in_ch)
    v = jax.eval_shape(model.init, KEY, jnp.zeros((1, 64, 64, in_ch)), jnp.zeros((1,), jnp.int32))
    assert (count(v["params"]), count(v["batch_stats"])) == expected_params(in_ch, in_ch, (32, 64, 96, 128), 2)
    assert count(v["params"]) == (1950497 if in_ch == 1 else 1950627)


def test_tiny_parameter_count():
    model = KerasDDIM(out_channels=2, widths=(4, 8, 12), block_depth=2, embedding_dims=8, num_timesteps=10)
    v = jax.eval_shape(model.init, KEY, jnp.zeros((2, 8, 8, 2)), jnp.zeros((2,), jnp.int32))
    assert (count(v["params"]), count(v["batch_stats"])) == expected_params(2, 2, (4, 8, 12), 2, 8)


def test_zero_output_at_init():
    model = KerasDDIM(out_channels=1, widths=(4, 8), block_depth=1, embedding_dims=8, num_timesteps=10)
    x = jax.random.normal(KEY, (2, 8, 8, 1))
    t = jnp.array([0, 9], jnp.int32)

    @jax.jit
    def init_and_apply(x, t):
        variables = model.init(FAST_KEY, x, t)
        return variables, model.apply(variables, x, t)

    variables, out = init_and_apply(x, t)
    assert out.shape == (2, 8, 8, 1) and not np.any(np.asarray(out))
    assert np.any(np.asarray(variables["params"]["down0_0"]["conv1"]["kernel"]))   # only the output conv is zero


def test_train_mode_loss_gradients_and_batch_stats_through_generation_task():
    c = keras_ddim_tiny.get_config()
    c.model.update(dict(widths=(4, 8), embedding_dims=8))
    c.diffusion.num_timesteps = 10
    c.data.image_size = 8
    task = tasks.build(c)
    assert task.model.num_timesteps == task.schedule.num_timesteps == 10
    batch = {"image": jax.random.uniform(KEY, (4, 8, 8, 1), minval=-1.0, maxval=1.0)}
    shapes = jax.eval_shape(task.init, KEY, task.example_batch(4))   # traced, not compiled
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), shapes["params"])
    state = {"batch_stats": jax.tree_util.tree_map_with_path(     # Flax's initial statistics: mean 0, var 1
        lambda path, a: jnp.full(a.shape, float(path[-1].key == "var"), a.dtype), shapes["batch_stats"])}

    @jax.jit
    def loss_and_grads(params, state):
        return jax.value_and_grad(task.loss, has_aux=True)(params, state, batch, FAST_KEY, True)

    (loss, (metrics, new_state)), grads = loss_and_grads(params, state)
    assert np.isfinite(float(loss)) and float(loss) > 0
    gnorm = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(gnorm)) and min(gnorm) > 0
    stats = new_state["batch_stats"]["down0_0"]["norm"]
    assert float(jnp.abs(stats["mean"]).sum()) > 0                   # running mean moved from 0
    assert not np.allclose(stats["var"], 1.0)                          # running variance moved from 1
