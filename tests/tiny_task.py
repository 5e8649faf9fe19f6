"""A tiny model and task that exercise every part of the shared step (BatchNorm, dropout, accumulation)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff.models import register
from jaxdiff.tasks.base import Task, zeros_like_spec


@register("tiny_test_net")
class TinyNet(nn.Module):
    """x (B, 8) -> (B, 1); `batchnorm` and `dropout` optional."""
    features: int = 32
    batchnorm: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = nn.Dense(self.features)(x)
        if self.batchnorm:
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(h))
        return nn.Dense(1)(h)


class RegressionTask(Task):
    """Fit y = <x, w_true> with MSE."""

    def example_batch(self, batch_size):
        return zeros_like_spec({"x": ((8,), np.float32), "y": ((1,), np.float32)}, batch_size)

    def model_inputs(self, batch):
        return (jnp.asarray(batch["x"]),), {}

    def loss(self, params, model_state, batch, rng, train=True):
        mutable = list(model_state) if train and model_state else False
        out = self.apply({"params": params, **model_state}, batch["x"], rng=rng, train=train, mutable=mutable)
        pred, new_state = out if mutable else (out, model_state)
        loss = jnp.mean((pred - batch["y"]) ** 2)
        return loss, ({"mse": loss}, new_state)

    def finalize(self, state, workdir, val_source, rng):
        return {}


def tiny_config(**train):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "regression"
    c.model = ml_collections.ConfigDict(dict(name="tiny_test_net", features=32, batchnorm=False, dropout=0.0))
    c.train = ml_collections.ConfigDict(dict(steps=100, batch_size=16, lr=1e-2, warmup_steps=0,
                                             lr_schedule="constant", optimizer="adam", grad_clip=0.0, ema=0.9,
                                             accum_steps=1, precision="fp32"))
    c.train.update(train)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    return c


def make_batches(n: int, batch_size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = np.linspace(-1, 1, 8).astype(np.float32)
    out = []
    for _ in range(n):
        x = rng.normal(size=(batch_size, 8)).astype(np.float32)
        out.append({"x": x, "y": (x @ w)[:, None].astype(np.float32)})
    return out


def run(config, batches, mesh=None):
    """Train on `batches` with the shared step; returns (state, list of metric dicts, jitted step)."""
    from jaxdiff.training import sharding as shd
    from jaxdiff.training.state import make_optimizer
    from jaxdiff.training.step import compile_train_step, init_state
    task = RegressionTask(config)
    mesh = mesh or shd.make_mesh(config.mesh)
    example = shd.global_batch(task.example_batch(config.train.batch_size), mesh)
    state, shardings = init_state(task, make_optimizer(config.train), jax.random.PRNGKey(0), example, mesh,
                                  fsdp_min_size=64)
    step = compile_train_step(task, config.train, mesh, shardings)
    metrics = []
    for b in batches:
        state, m = step(state, shd.global_batch(b, mesh), jax.random.PRNGKey(1))
        metrics.append(jax.device_get(m))
    return state, metrics, step
