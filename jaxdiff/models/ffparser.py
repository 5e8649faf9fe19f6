"""FF-Parser (MedSegDiff, arXiv 2211.00611 eq. 4-6): a learnable filter applied in Fourier space.

Features m (B, H, W, C) go to the frequency domain, are multiplied elementwise by a learned weight per
(frequency, channel), and come back: m' = F^-1[A * F[m]]. Two parametrisations:

- paper (default, as in the official MedicineToken/MedSegDiff code): `rfft2` over (H, W) with norm="ortho",
  a complex weight A of shape (H, W//2+1, C) stored as a real parameter `complex_weight` (H, W//2+1, C, 2)
  (real, imaginary), `irfft2` back to (H, W). Initialised to the identity (real 1, imaginary 0), so the
  block starts as a no-op; the official code draws N(0, 0.02^2) instead, which starts near zero.
- seed (`faithful=True`, lucidrains' med-seg-diff-pytorch `Conditioning`): full `fft2` (default norm),
  a REAL weight `ff_parser_attn_map` of shape (C, H, W) initialised to ones, `ifft2`, real part.
  C*H*W parameters.

Sizes (H, W, C) are taken from the input at init, so the module is bound to one feature-map size.
The FFT always runs in float32, also when the model computes in bf16 (input and weight are cast up,
the result is cast back to the input dtype): XLA has no bf16 FFT and its rounding would dominate.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def _identity_complex(key, shape, dtype=jnp.float32):
    """Complex identity (real part 1, imaginary part 0) stored as (..., 2)."""
    del key
    return jnp.stack([jnp.ones(shape[:-1], dtype), jnp.zeros(shape[:-1], dtype)], axis=-1)


class FFParser(nn.Module):
    """Learnable Fourier-space filter over the spatial axes.

    Attributes:
      faithful: False -> paper/official complex rfft2 weight (H, W//2+1, C); True -> the original notebook's real
        fft2 weight (C, H, W).
    Call: x (B, H, W, C) -> (B, H, W, C) in x's dtype.
    """
    faithful: bool = False

    @nn.compact
    def __call__(self, x):
        _, h, w, c = x.shape
        x32 = x.astype(jnp.float32)
        if self.faithful:
            weight = self.param("ff_parser_attn_map", nn.initializers.ones, (c, h, w), jnp.float32)
            spectrum = jnp.fft.fft2(x32, axes=(1, 2))
            out = jnp.fft.ifft2(spectrum * jnp.transpose(weight.astype(jnp.float32), (1, 2, 0)), axes=(1, 2)).real
        else:
            weight = self.param("complex_weight", _identity_complex, (h, w // 2 + 1, c, 2), jnp.float32)
            weight = weight.astype(jnp.float32)
            spectrum = jnp.fft.rfft2(x32, axes=(1, 2), norm="ortho")
            out = jnp.fft.irfft2(spectrum * jax.lax.complex(weight[..., 0], weight[..., 1]), s=(h, w),
                                 axes=(1, 2), norm="ortho")
        return out.astype(x.dtype)
