"""A segmenter paired with an error head: the TransUNet-style BraTS segmenter's VAE that reconstructs the map of
its own errors |logits - mask| (the error head itself is `vae_error_head` in `transformer_unet`)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class SegmenterWithErrorHead(nn.Module):
    """(image (B, H, W, C), mask (B, H, W, K) or None) -> (logits (B, H, W, K'), error-head outputs or None).

    With an error head and a mask, the error map |logits - mask| (the first logit channel when the logits and the
    mask differ in channels) goes through the head: outputs (error, recon, mu, logvar). Parameters under
    "segmenter" / "error_head".
    """

    segmenter: nn.Module
    error_head: nn.Module | None = None

    @nn.compact
    def __call__(self, x, mask=None, *, train: bool = False):
        logits = self.segmenter(x, train=train)
        if self.error_head is None or mask is None:
            return logits, None
        error = jnp.abs((logits if logits.shape[-1] == mask.shape[-1] else logits[..., :1]) - mask)
        recon, mu, logvar = self.error_head(error, train=train)
        return logits, (error, recon, mu, logvar)
