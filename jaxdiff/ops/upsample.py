"""Depth-to-space upsampling, each op a plain reference (as the papers write it) beside its XLA:CPU form.

- `upsample_conv(x, kernel, bias)` = conv3x3(nearest_upsample_x2(x)) with padding 1 (the UNet decoders' upsampling,
  Ho et al. 2020); the CPU form convolves the coarse grid once per output phase and interleaves the phases;
- `patch_conv_transpose(x, kernel, bias)` = a transposed convolution whose kernel equals its stride ("VALID", as
  `nn.ConvTranspose`); the CPU form is one matmul and a depth-to-space reshape.

Each is `lax.platform_dependent(cpu=tuned_*, default=reference_*)`, chosen when the program is lowered.
Channels-last: x (B, S1, ..., C), any spatial rank.
"""
from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdiff.ops.products import tuned_matmul


def _conv_dims(rank: int):
    """Channels-last dimension numbers for a rank-D conv: ("NHWC", "HWIO", "NHWC") in 2D."""
    sp = "DHW"[-rank:]
    return (f"N{sp}C", f"{sp}IO", f"N{sp}C")


def reference_upsample_conv(x, kernel, bias):
    """conv3x3(nearest_upsample_x2(x)) with padding 1 as written: x (B, S1, ..., C), kernel (3, ..., 3, C, K), bias
    (K,) -> (B, 2 S1, ..., K)."""
    rank = x.ndim - 2
    for axis in range(1, x.ndim - 1):
        x = jnp.repeat(x, 2, axis=axis)
    dims = lax.conv_dimension_numbers(x.shape, kernel.shape, _conv_dims(rank))
    return lax.conv_general_dilated(x, kernel, (1,) * rank, [(1, 1)] * rank, dimension_numbers=dims) + bias


# Nearest x2 then a 3-tap conv (padding 1), per output phase: phase 0 of an axis reads coarse offsets (-1, 0)
# with taps (w0, w1 + w2), phase 1 offsets (0, +1) with taps (w0 + w1, w2).
_PHASE_TAPS = (np.array([[1, 0, 0], [0, 1, 1]], np.float32), np.array([[1, 1, 0], [0, 0, 1]], np.float32))
_PHASE_PAD = ((1, 0), (0, 1))


def tuned_upsample_conv(x, kernel, bias):
    """`reference_upsample_conv` computed on the coarse grid (same function, fewer FLOPs).

    Each of the 2^rank output phases is a 2x2(x2) conv of `x` with a kernel summed from `kernel`'s taps, so the
    work is 4 taps per phase instead of 9 on a 4x larger image (2.25x fewer multiply-adds in 2D, 3.4x in 3D),
    in the forward and the backward pass.

    Args:
      x: (B, S1, ..., C) channels-last input.
      kernel: (3, ..., 3, C, K) the conv's kernel; bias: (K,).
    Returns:
      (B, 2 S1, ..., K), equal to `repeat(x, 2)` on every spatial axis followed by the 3x3(x3) conv.
    """
    rank = x.ndim - 2
    phases = []
    for phase in itertools.product((0, 1), repeat=rank):
        k = kernel
        for axis, ph in enumerate(phase):  # (3, ...) taps -> (2, ...) on this axis
            k = jnp.moveaxis(jnp.tensordot(jnp.asarray(_PHASE_TAPS[ph], k.dtype), k, axes=(1, axis)), 0, axis)
        phases.append(lax.conv_general_dilated(
            x, k, (1,) * rank, [_PHASE_PAD[ph] for ph in phase],
            dimension_numbers=lax.conv_dimension_numbers(x.shape, k.shape, _conv_dims(rank))))
    b, spatial, out = x.shape[0], x.shape[1:-1], kernel.shape[-1]
    return depth_to_space(jnp.stack(phases, axis=-2).reshape(b, *spatial, *(2,) * rank, out)) + bias


def depth_to_space(y):
    """Depth to space: (B, S1, ..., Sr, k1, ..., kr, K) -> (B, k1 S1, ..., kr Sr, K), output position
    k_i s_i + d_i taken from y[b, s..., d..., :]."""
    rank = (y.ndim - 2) // 2
    spatial, ks = y.shape[1:1 + rank], y.shape[1 + rank:1 + 2 * rank]
    order = [0] + [a for i in range(rank) for a in (1 + i, 1 + rank + i)] + [1 + 2 * rank]
    return y.transpose(order).reshape(y.shape[0], *(n * k for n, k in zip(spatial, ks)), y.shape[-1])


def upsample_conv(x, kernel, bias):
    """conv3x3(nearest_upsample_x2(x)) with padding 1: x (B, S1, ..., C), kernel (3, ..., 3, C, K), bias (K,) ->
    (B, 2 S1, ..., K) (`tuned_upsample_conv` on the CPU)."""
    return lax.platform_dependent(x, kernel, bias, cpu=tuned_upsample_conv, default=reference_upsample_conv)


def reference_patch_conv_transpose(x, kernel, bias):
    """`nn.ConvTranspose(K, ks, strides=ks, padding="VALID")`'s function: `lax.conv_transpose` of x (B, S1, ..., C)
    with kernel (k1, ..., C, K), plus bias (K,) -> (B, k1 S1, ..., K)."""
    rank = x.ndim - 2
    return lax.conv_transpose(x, kernel, kernel.shape[:rank], "VALID", dimension_numbers=_conv_dims(rank)) + bias


def tuned_patch_conv_transpose(x, kernel, bias):
    """`reference_patch_conv_transpose` as one matmul and a depth-to-space reshape.

    With k = stride the output patches do not overlap: out[b, k i + d, ..., o] = sum_c x[b, i, ..., c]
    kernel[k-1-d, ..., c, o] + bias[o] (lax.conv_transpose's tap order). XLA lowers the weight gradient of the
    lhs-dilated convolution to a base-dilated convolution (most of the TransUNet-style segmenter's backward conv
    time on XLA:CPU); as a product the gradients are plain products (x^T g for the kernel, `tuned_matmul`).

    Args:
      x: (B, S1, ..., C) channels-last input.
      kernel: (k1, ..., C, K) as `nn.ConvTranspose(K, (k1, ...), strides=(k1, ...), padding="VALID")` holds it.
      bias: (K,).
    Returns:
      (B, k1 S1, ..., K), the same values as that `nn.ConvTranspose`.
    """
    rank = x.ndim - 2
    ks, c, out = kernel.shape[:rank], kernel.shape[-2], kernel.shape[-1]
    flipped = kernel[(slice(None, None, -1),) * rank]
    w = jnp.moveaxis(flipped, rank, 0).reshape(c, -1)  # (C, k1 ... K)
    b, spatial = x.shape[0], x.shape[1:-1]
    return depth_to_space(tuned_matmul(x.reshape(-1, c), w).reshape(b, *spatial, *ks, out)) + bias


def patch_conv_transpose(x, kernel, bias):
    """Transposed conv whose kernel equals its stride ("VALID"): x (B, S1, ..., C), kernel (k1, ..., C, K) as
    `nn.ConvTranspose` holds it, bias (K,) -> (B, k1 S1, ..., K) (`tuned_patch_conv_transpose` on the CPU)."""
    return lax.platform_dependent(x, kernel, bias, cpu=tuned_patch_conv_transpose,
                                  default=reference_patch_conv_transpose)
