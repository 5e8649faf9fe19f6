"""Unconditional or class-conditional image/volume generation with a diffusion denoiser.

Batch: {"image": (B, ..., C) in [-1, 1], optional "label": (B,) int32}. With `model.num_classes > 0` the label
conditions the model and is dropped to the null class `num_classes` with probability `diffusion.cond_drop`
(classifier-free guidance).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.metrics import distribution
from jaxdiff.tasks.base import zeros_like_spec
from jaxdiff.tasks.diffusion_task import DiffusionTask
from jaxdiff.viz import grid


class GenerationTask(DiffusionTask):
    """Learn p(image) (or p(image | label)); report samples and a pixel-MMD to held-out images."""

    @property
    def num_classes(self) -> int:
        return int(self.config.model.get("num_classes", 0))

    def image_shape(self) -> tuple:
        d = self.config.data
        size = d.image_size
        spatial = tuple(size) if isinstance(size, (tuple, list)) else (size,) * int(d.get("dims", 2))
        return (*spatial, int(d.get("channels", 1)))

    def example_batch(self, batch_size: int) -> dict:
        spec = {"image": (self.image_shape(), np.float32)}
        if self.num_classes:
            spec["label"] = ((), np.int32)
        return zeros_like_spec(spec, batch_size)

    def _cond(self, batch, rng=None):
        if not self.num_classes:
            return None
        label = batch["label"].astype(jnp.int32)
        p = float(self.config.diffusion.get("cond_drop", 0.1))
        if rng is not None and p > 0:
            label = jnp.where(jax.random.bernoulli(rng, p, label.shape), self.num_classes, label)
        return {"label": label}

    def model_inputs(self, batch):
        x = jnp.asarray(batch["image"])
        return (x, jnp.zeros((x.shape[0],), jnp.int32), self._cond(batch)), {}

    def loss(self, params, model_state, batch, rng, train=True):
        c_rng, rng = jax.random.split(rng)
        return self.diffusion_loss(params, model_state, batch["image"], self._cond(batch, c_rng if train else None),
                                   rng, train)

    def generate(self, variables, num: int, rng, labels=None, num_steps=None):
        """Draw `num` samples (num, ..., C); `labels` (num,) for a class-conditional model; `num_steps`
        overrides diffusion.sample_steps (DDIM)."""
        cond = uncond = None
        if self.num_classes:
            labels = jnp.zeros((num,), jnp.int32) if labels is None else jnp.asarray(labels, jnp.int32)
            cond, uncond = {"label": labels}, {"label": jnp.full((num,), self.num_classes, jnp.int32)}
        return self.jitted_sample(variables, (num, *self.image_shape()), rng, cond=cond, uncond=uncond,
                                  num_steps=num_steps)

    def finalize(self, state, workdir, val_source, rng) -> dict:
        """Sample `sample.num` images with the EMA parameters, save a grid, compare with held-out images."""
        num = int(self.config.get("sample", {}).get("num", 16))
        samples = np.asarray(jax.device_get(self.generate(state.variables(ema=True), num, rng)))
        step = int(jax.device_get(state.step))
        path = grid.save_grid(samples, os.path.join(workdir, "samples", f"samples_step{step:06d}.png"), scale=2)
        ref = np.stack([val_source[i]["image"] for i in range(min(len(val_source), max(num, 2)))])
        return {"pixel_mmd": distribution.mmd_rbf(distribution.pooled_pixels(samples),
                                                 distribution.pooled_pixels(ref)),
                "samples_png": path}

    def sample_to_files(self, state, out_dir: str, num: int, steps, rng) -> list[str]:
        """`jaxdiff.sample`: a grid PNG plus one PNG per sample (2D)."""
        samples = np.asarray(jax.device_get(self.generate(state.variables(ema=True), num, rng, num_steps=steps)))
        paths = [grid.save_grid(samples, os.path.join(out_dir, "grid.png"), scale=2)]
        for i, s in enumerate(samples):
            paths.append(grid.save_grid(s[None], os.path.join(out_dir, f"sample_{i:03d}.png"), ncol=1))
        return paths
