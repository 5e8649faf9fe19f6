"""Diffusion segmentation (MedSegDiff): denoise a noisy mask conditioned on the image.

Batch: {"image": (B, H, W, C) in [-1, 1], "mask": (B, H, W, 1) in {0, 1}}. The diffused variable is the mask
scaled to [-1, 1]; the model is `model(x_t, t, {"image": image}) -> eps`. Prediction draws an ensemble of
`diffusion.ensemble` samples per image in ONE batched sampler call (one lax.scan), maps them to [0, 1] and
fuses them by the mean (`diffusion.fusion = "mean"`) or by the official MedSegDiff re-weighted mean
("staple": the mean re-weighted once by itself); the per-pixel variance of the ensemble is the uncertainty.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.tasks import seg_eval
from jaxdiff.tasks.base import zeros_like_spec
from jaxdiff.tasks.diffusion_task import DiffusionTask
from jaxdiff.training import sharding as shd


def fuse(probs, how: str = "mean"):
    """Fuse an ensemble (N, B, H, W, 1) of probabilities in [0, 1] into (B, H, W, 1).

    "mean": the average. "staple": MedSegDiff's `staple()`, which re-weights each member by the mean once and
    averages again, i.e. mean(p_i * mean(p)) = mean(p)^2 (sharper, biased towards background).
    """
    mean = jnp.mean(probs, axis=0)
    if how == "mean":
        return mean
    if how == "staple":
        return jnp.mean(probs * mean[None], axis=0)
    raise InputError(f"config key diffusion.fusion: {how!r} is not mean or staple")


class SegmentationDiffusionTask(DiffusionTask):
    """MedSegDiff-style training and ensemble prediction."""

    def image_shape(self) -> tuple:
        s = int(self.config.data.image_size)
        return (s, s, int(self.config.data.get("channels", 1)))

    def example_batch(self, batch_size: int) -> dict:
        s = int(self.config.data.image_size)
        return zeros_like_spec({"image": (self.image_shape(), np.float32), "mask": ((s, s, 1), np.float32)},
                               batch_size)

    def model_inputs(self, batch):
        mask = jnp.asarray(batch["mask"])
        return (mask, jnp.zeros((mask.shape[0],), jnp.int32), {"image": jnp.asarray(batch["image"])}), {}

    def loss(self, params, model_state, batch, rng, train=True):
        x0 = batch["mask"] * 2.0 - 1.0
        return self.diffusion_loss(params, model_state, x0, {"image": batch["image"]}, rng, train)

    def predict(self, variables, images, rng, ensemble: int | None = None, num_steps=None):
        """Segment `images` (B, H, W, C).

        Returns dict with "prob" (B, H, W, 1) fused probability, "pred" (prob > 0.5), "variance" (B, H, W, 1)
        ensemble variance, and "samples" (N, B, H, W, 1) member probabilities.
        """
        n = int(ensemble or self.config.diffusion.get("ensemble", 5))
        b = images.shape[0]
        tiled = jnp.tile(images, (n, 1, 1, 1))  # (N*B, H, W, C): members of image i at i, B+i, 2B+i, ...
        x = self.jitted_sample(variables, (n * b, *images.shape[1:3], 1), rng, cond={"image": tiled},
                               num_steps=num_steps)
        probs = jnp.clip((x.reshape(n, b, *x.shape[1:]) + 1.0) / 2.0, 0.0, 1.0)
        prob = fuse(probs, self.config.diffusion.get("fusion", "mean"))
        return {"prob": prob, "pred": (prob > 0.5).astype(jnp.float32), "variance": jnp.var(probs, axis=0),
                "samples": probs}

    @functools.cached_property
    def _predict_jit(self):
        return jax.jit(self.predict, static_argnames=("ensemble", "num_steps"))

    def predict_source(self, variables, source, rng, num: int | None = None, batch_size: int = 16,
                       num_steps=None) -> dict:
        """Predict the first `num` examples of a random-access source in batches; numpy outputs."""
        data = seg_eval.collect(source, num)
        ensemble = int(self.config.diffusion.get("ensemble", 5))  # the jit's inputs on its sampling devices
        _, variables, _ = shd.place_for_sampling(ensemble * batch_size, variables, None)
        outs = []
        for i in range(0, len(data["image"]), batch_size):
            chunk = data["image"][i: i + batch_size]
            pad = batch_size - len(chunk)  # pad to one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
            out = jax.device_get(self._predict_jit(variables, jnp.asarray(chunk), jax.random.fold_in(rng, i),
                                                   num_steps=num_steps))
            outs.append({k: np.asarray(v[: batch_size - pad]) for k, v in out.items() if k != "samples"})
        return {**data, **{k: np.concatenate([o[k] for o in outs]) for k in outs[0]}}

    def evaluate(self, state, source, out_dir: str, rng, num: int | None = None, num_steps=None) -> dict:
        """Metrics on `source` (first `num` examples) with EMA parameters; writes evaluation.json + overlays."""
        ev = self.config.get("eval", {})
        res = self.predict_source(state.variables(ema=True), source, rng, num=num or ev.get("num_examples"),
                                  batch_size=int(ev.get("batch_size", 16)), num_steps=num_steps)
        return seg_eval.report(res["image"], res["mask"], res["pred"], out_dir, uncertainty=res["variance"])

    def finalize(self, state, workdir, val_source, rng) -> dict:
        return self.evaluate(state, val_source, os.path.join(workdir, "samples"), rng)
