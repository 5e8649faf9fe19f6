"""Diffusion segmentation (MedSegDiff): denoise a noisy mask conditioned on the image.

Batch: {"image": (B, H, W, C) in [-1, 1], "mask": (B, H, W, K) in {0, 1}}; K = 1 (whole tumour) or, with
`data.regions` (e.g. "brats"), one channel per nested region (WT, TC, ET), and then `model.mask_channels` = K.
The diffused variable is the K-channel mask scaled to [-1, 1]; the model is `model(x_t, t, {"image": image}) ->
eps`. Prediction draws an ensemble of
`diffusion.ensemble` samples per image in ONE batched sampler call (one lax.scan), maps them to [0, 1] and
fuses them by the mean (`diffusion.fusion = "mean"`) or by the official MedSegDiff re-weighted mean
("staple": the mean re-weighted once by itself), each channel on its own; the per-pixel variance of the
ensemble is the uncertainty.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.data.sources import mask_channels
from jaxdiff.errors import InputError
from jaxdiff.tasks import seg_eval
from jaxdiff.tasks.base import zeros_like_spec
from jaxdiff.tasks.diffusion_task import DiffusionTask


def fuse(probs, how: str = "mean"):
    """Fuse an ensemble (N, B, H, W, K) of probabilities in [0, 1] into (B, H, W, K), channel by channel.

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

    def __init__(self, config):
        super().__init__(config)
        self.regions = config.data.get("regions", None) is not None
        self.mask_channels = mask_channels(config.data)
        k = getattr(self.model, "mask_channels", None)
        if k is not None and k != self.mask_channels:
            raise InputError(f"config key model.mask_channels: {k}, but data.regions="
                             f"{config.data.get('regions', None)!r} gives {self.mask_channels} mask channel(s)")

    def image_shape(self) -> tuple:
        s = int(self.config.data.image_size)
        return (s, s, int(self.config.data.get("channels", 1)))

    def example_batch(self, batch_size: int) -> dict:
        s = int(self.config.data.image_size)
        return zeros_like_spec({"image": (self.image_shape(), np.float32),
                                "mask": ((s, s, self.mask_channels), np.float32)}, batch_size)

    def model_inputs(self, batch):
        mask = jnp.asarray(batch["mask"])
        return (mask, jnp.zeros((mask.shape[0],), jnp.int32), {"image": jnp.asarray(batch["image"])}), {}

    def loss(self, params, model_state, batch, rng, train=True):
        x0 = batch["mask"] * 2.0 - 1.0
        return self.diffusion_loss(params, model_state, x0, {"image": batch["image"]}, rng, train)

    def predict(self, variables, images, rng, ensemble: int | None = None, num_steps=None):
        """Segment `images` (B, H, W, C).

        Returns dict with "prob" (B, H, W, K) fused probability, "pred" (prob > 0.5; with `data.regions` each
        region also clipped to the one enclosing it, so ET <= TC <= WT), "variance" (B, H, W, K) ensemble
        variance, and "samples" (N, B, H, W, K) member probabilities.
        """
        n = int(ensemble or self.config.diffusion.get("ensemble", 5))
        b = images.shape[0]
        tiled = jnp.tile(images, (n, 1, 1, 1))  # (N*B, H, W, C): members of image i at i, B+i, 2B+i, ...
        x = self.jitted_sample(variables, (n * b, *images.shape[1:3], self.mask_channels), rng,
                               cond={"image": tiled}, num_steps=num_steps)
        probs = jnp.clip((x.reshape(n, b, *x.shape[1:]) + 1.0) / 2.0, 0.0, 1.0)
        prob = fuse(probs, self.config.diffusion.get("fusion", "mean"))
        pred = (prob > 0.5).astype(jnp.float32)
        return {"prob": prob, "pred": jax.lax.cummin(pred, axis=pred.ndim - 1) if self.regions else pred,
                "variance": jnp.var(probs, axis=0), "samples": probs}

    @functools.cached_property
    def _predict_jit(self):
        return jax.jit(self.predict, static_argnames=("ensemble", "num_steps"))

    def evaluate(self, state, source, out_dir: str, rng, num: int | None = None, num_steps=None,
                 split: str | None = None) -> dict:
        """Whole held-out cases of `source` (3D per region in mm, `seg_eval`) segmented with EMA parameters as
        `jaxdiff.predict` segments them (the ensemble of each batch of slices in one batched sampler call, split
        over the devices); `num` cases (None: eval.num_cases or all); `split` names it."""
        return seg_eval.evaluate(self, state.variables(ema=True), source, out_dir, rng, num=num,
                                 num_steps=num_steps, split=split)

    def finalize(self, state, workdir, val_source, rng) -> dict:
        return self.evaluate(state, val_source, os.path.join(workdir, "samples"), rng, split="val")
