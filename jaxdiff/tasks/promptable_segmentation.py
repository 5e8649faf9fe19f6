"""Promptable segmentation (SAM fine-tuning, MedSAM-style): box prompts from the target masks.

Batch: {"image": (B, S, S, C) in [-1, 1], "mask": (B, S, S, 1) in {0, 1}}, S = model.image_size, C = 1 or 3
(the `mask_folder` source, e.g. SAM pseudo-masks). The image is mapped to SAM's input (0-255 RGB normalised by
the ImageNet mean/std), the prompt is each mask's bounding box (the whole image when the mask is empty), and
the single-mask output, bilinearly upscaled to S, is trained with BCE + soft Dice; the IoU head regresses the
IoU of its thresholded mask (MSE). `summary` reports all SAM parameters (93,735,728 for ViT-B).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.models.sam.model import PIXEL_MEAN, PIXEL_STD
from jaxdiff.tasks import seg_eval
from jaxdiff.tasks.base import Task, progress_bar, progress_line, zeros_like_spec
from jaxdiff.tasks.segmentation import soft_dice_loss


def to_sam_input(images):
    """(B, S, S, C) in [-1, 1], C = 1 or 3 -> (B, S, S, 3) normalised SAM input."""
    rgb = jnp.broadcast_to(images, (*images.shape[:-1], 3)) if images.shape[-1] == 1 else images
    return ((rgb + 1.0) * 127.5 - PIXEL_MEAN) / PIXEL_STD


def mask_boxes(mask):
    """(B, S, S, 1) masks -> (B, 4) pixel boxes (x0, y0, x1, y1) around the mask; the whole image if empty."""
    s = mask.shape[1]
    m = mask[..., 0] > 0.5
    idx = jnp.arange(s, dtype=jnp.float32)

    def span(hit):                                       # (B, S) bool -> first and last hit, or (0, S - 1)
        lo = jnp.min(jnp.where(hit, idx, s - 1.0), axis=1)
        hi = jnp.max(jnp.where(hit, idx, 0.0), axis=1)
        empty = ~hit.any(1)
        return jnp.where(empty, 0.0, lo), jnp.where(empty, s - 1.0, hi)

    x0, x1 = span(m.any(1))
    y0, y1 = span(m.any(2))
    return jnp.stack([x0, y0, x1, y1], axis=-1)


class PromptableSegmentationTask(Task):
    """Fine-tune SAM with box prompts; evaluate Dice/IoU of the box-prompted masks per image."""

    def example_batch(self, batch_size):
        s, c = int(self.model.image_size), int(self.config.data.get("channels", 3))
        return zeros_like_spec({"image": ((s, s, c), np.float32), "mask": ((s, s, 1), np.float32)}, batch_size)

    def model_inputs(self, batch):
        mask = jnp.asarray(batch["mask"])
        return (to_sam_input(jnp.asarray(batch["image"])),), {"boxes": mask_boxes(mask),
                                                               "multimask_output": False}

    def logits(self, variables, batch, rng=None, train=False):
        """(mask logits (B, S, S, 1) at the input size, predicted IoU (B, 1))."""
        args, kwargs = self.model_inputs(batch)
        low, iou = self.apply(variables, *args, rng=rng, train=train, **kwargs)
        b, s = low.shape[0], batch["mask"].shape[1]
        return jax.image.resize(low, (b, s, s, 1), "linear", antialias=False), iou

    def loss(self, params, model_state, batch, rng, train=True):
        mask = batch["mask"]
        logits, iou_pred = self.logits({"params": params, **model_state}, batch, rng=rng, train=train)
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, mask))
        dice = soft_dice_loss(jax.nn.sigmoid(logits), mask)
        pred = jax.lax.stop_gradient((logits > 0).astype(jnp.float32))
        inter, union = jnp.sum(pred * mask, (1, 2, 3)), jnp.sum(jnp.maximum(pred, mask), (1, 2, 3))
        iou_loss = jnp.mean((iou_pred[:, 0] - jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)) ** 2)
        loss = bce + dice + iou_loss
        return loss, ({"loss": loss, "bce": bce, "dice_loss": dice, "iou_loss": iou_loss}, model_state)

    def finalize(self, state, workdir, val_source, rng) -> dict:
        """Box-prompted predictions on `val_source` (eval.num_examples of them) -> `seg_eval.report`."""
        ema = float(self.config.train.get("ema", 0.0)) > 0
        variables = state.variables(ema=ema)
        data = seg_eval.collect(val_source, self.config.get("eval", {}).get("num_examples"))
        fn = jax.jit(lambda v, b: self.logits(v, b)[0] > 0)
        bs = int(self.config.get("eval", {}).get("batch_size", 2))
        n = len(data["image"])
        progress_line(f"scoring the val split: {n} box-prompted examples, in batches of {min(bs, n)}")
        preds = np.concatenate([np.asarray(fn(variables, {"image": data["image"][i:i + bs],
                                                          "mask": data["mask"][i:i + bs]}))
                                for i in progress_bar(range(0, n, bs), "predicting", total=-(-n // bs))]
                               ).astype(np.float32)
        return seg_eval.report(data["image"], data["mask"], preds, os.path.join(workdir, "samples"))
