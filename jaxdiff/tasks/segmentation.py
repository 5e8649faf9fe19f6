"""Supervised segmentation (the TransUNet-style BraTS segmenter, the 512 U-Net), optionally with a VAE error head.

Batch: {"image": (B, H, W, C) in [-1, 1], "mask": (B, H, W, K) in {0, 1}}. The segmenter `config.model` maps
the image to logits: one channel (sigmoid, binary cross-entropy) or `K >= 2` channels (softmax cross-entropy,
class 1 = tumour, mask K = 1). With `data.regions` (e.g. "brats": WT, TC, ET) the mask has one channel per
region and the model as many logits, each an independent sigmoid (nnU-Net's region-based training): BCE and soft
Dice are taken per region channel and averaged over the regions. With `config.error_head` (e.g.
`name="vae_error_head"`) a VAE reconstructs the error map |logits - mask| and the loss is the TransUNet-style
segmenter's: BCE + `loss.error_weight` * MSE(recon, error) [+ `loss.kl_weight` * KL, which the original omits]
[+ `loss.dice_weight` * soft Dice loss].
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import models, reporting
from jaxdiff.data.sources import mask_channels
from jaxdiff.errors import InputError
from jaxdiff.models.params import count
from jaxdiff.models.segmenter_error_head import SegmenterWithErrorHead
from jaxdiff.tasks import seg_eval
from jaxdiff.tasks.base import Task, zeros_like_spec


def soft_dice_loss(prob, mask, eps: float = 1.0):
    """1 - soft Dice per example and channel, prob/mask (B, H, W, K); averaged over the batch and the channels
    (the K regions of region-based training; K = 1 otherwise)."""
    axes = tuple(range(1, prob.ndim - 1))
    inter = jnp.sum(prob * mask, axes)
    return jnp.mean(1.0 - (2.0 * inter + eps) / (jnp.sum(prob, axes) + jnp.sum(mask, axes) + eps))


class SegmentationTask(Task):
    """Train a segmenter with BCE/CE (+ error VAE, + Dice); evaluate per case."""

    def __init__(self, config):
        super().__init__(config)
        head = config.get("error_head", None)
        self.regions = config.data.get("regions", None) is not None
        self.mask_channels = mask_channels(config.data)
        error_head = models.build(head) if head and head.get("name") else None
        for key, module in (("model.out_channels", self.model), ("error_head.out_channels", error_head)):
            k = getattr(module, "out_channels", None)
            if self.regions and k is not None and k != self.mask_channels:
                raise InputError(f"config key {key}: {k}, but data.regions={config.data.regions!r} has "
                                 f"{self.mask_channels} region channels")
        self.model = SegmenterWithErrorHead(self.model, error_head)
        self.loss_cfg = config.get("loss", {})

    def example_batch(self, batch_size):
        s, c = int(self.config.data.image_size), int(self.config.data.get("channels", 1))
        return zeros_like_spec({"image": ((s, s, c), np.float32), "mask": ((s, s, self.mask_channels), np.float32)},
                               batch_size)

    def model_inputs(self, batch):
        return (jnp.asarray(batch["image"]), jnp.asarray(batch["mask"])), {}

    def counted_params(self, params):
        """The parameters `summary` reports as `params:` (the segmenter; the error head is listed above it)."""
        return params["segmenter"]

    def summary_lines(self, variables):
        if "error_head" in variables["params"]:
            yield f"error head ({self.config.error_head.name}) params: {count(variables['params']['error_head'])}"

    def probability(self, logits):
        """Tumour probability (B, H, W, 1): sigmoid of one logit, or softmax class 1 of K logits; with
        `data.regions`, one sigmoid per region logit (B, H, W, K)."""
        if logits.shape[-1] == 1 or self.regions:
            return jax.nn.sigmoid(logits)
        return jax.nn.softmax(logits, axis=-1)[..., 1:2]

    def loss(self, params, model_state, batch, rng, train=True):
        mask = batch["mask"]
        mutable = list(model_state) if train and model_state else False
        out = self.apply({"params": params, **model_state}, batch["image"], mask, rng=rng, train=train,
                         mutable=mutable)
        (logits, head), new_state = out if mutable else (out, model_state)
        if logits.shape[-1] == 1 or self.regions:     # mean over pixels and regions = mean of per-region BCE
            seg = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, mask))
        else:
            seg = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, mask[..., 0].astype(jnp.int32)))
        metrics = {"seg_loss": seg}
        loss = seg
        if head is not None:
            error, recon, mu, logvar = head
            rec = jnp.mean((recon - error) ** 2)
            kl = -0.5 * jnp.mean(1.0 + logvar - mu ** 2 - jnp.exp(logvar))
            loss = loss + float(self.loss_cfg.get("error_weight", 0.5)) * rec + \
                float(self.loss_cfg.get("kl_weight", 0.0)) * kl
            metrics.update(error_recon=rec, kl=kl)
        dice_w = float(self.loss_cfg.get("dice_weight", 0.0))
        if dice_w:
            d = soft_dice_loss(self.probability(logits), mask)
            loss = loss + dice_w * d
            metrics["dice_loss"] = d
        return loss, ({**metrics, "loss": loss}, new_state)

    def predict(self, variables, images, masks=None):
        """Probabilities (B, H, W, K), binary predictions (prob > 0.5; with `data.regions` each region also
        clipped to the one enclosing it, so ET <= TC <= WT), and the VAE error-map reconstruction if any."""
        logits, head = self.apply(variables, images, masks, train=False)
        prob = self.probability(logits)
        pred = (prob > 0.5).astype(jnp.float32)
        out = {"prob": prob, "pred": jax.lax.cummin(pred, axis=pred.ndim - 1) if self.regions else pred}
        if head is not None:
            out["error_recon"] = head[1]
        return out

    def evaluate(self, state, source, out_dir: str, rng=None, num: int | None = None, num_steps=None,
                 split: str | None = None) -> dict:
        """Whole held-out cases of `source` (3D per region in mm, `seg_eval`) segmented with EMA parameters (raw
        ones when `train.ema` is 0) as `jaxdiff.predict` segments them; `num` cases (None: eval.num_cases or
        all); `split` names it. With an error head, its reconstruction of the first slices is saved too."""
        ema = float(self.config.train.get("ema", 0.0)) > 0
        variables = state.variables(ema=ema)
        if "error_head" in variables.get("params", {}) and len(source):
            first = [source[i] for i in range(min(16, len(source)))]
            recon = jax.device_get(jax.jit(self.predict)(
                variables, np.stack([e["image"] for e in first]), np.stack([e["mask"] for e in first])))
            if "error_recon" in recon:
                reporting.save_error_map(recon["error_recon"], out_dir)
        return seg_eval.evaluate(self, variables, source, out_dir, rng, num=num, split=split)

    def finalize(self, state, workdir, val_source, rng) -> dict:
        return self.evaluate(state, val_source, os.path.join(workdir, "samples"), rng, split="val")
