"""Ops with their references: each hand-tuned op beside a plain reference written as its paper writes it.

A public op (`group_norm_act`, `layer_norm`, `matmul`, `tn_matmul`, `with_scalar`, `dot_product_attention`,
`linear_attention_context`, `linear_attention_output`, `upsample_conv`, `patch_conv_transpose`,
`conv_general_dilated`) is `lax.platform_dependent(cpu=tuned_*, default=reference_*)`: the tuned form (custom VJPs,
optimisation barriers, the native Winograd kernel; measured on XLA:CPU) is lowered for the CPU, the reference (or
the accelerator's own kernel: Pallas flash attention on TPU, cuDNN on CUDA) everywhere else. The choice is made when
the program is lowered, never from the host's backend at trace time, so one traced or exported program is right on
every platform. `tests/test_ops.py` checks that each tuned form equals its reference in values and gradients.

Importing this package builds and starts nothing; the native kernel is built at its first use
(`jaxdiff.platform.native`).
"""
from __future__ import annotations

from jaxdiff.ops.attention import chunked_attention, dot_product_attention, reference_attention, xla_attention
from jaxdiff.ops.conv import conv_general_dilated
from jaxdiff.ops.linear_attention import linear_attention_context, linear_attention_output
from jaxdiff.ops.norms import group_norm_act, layer_norm, spatial_broadcast
from jaxdiff.ops.products import matmul, tn_matmul, with_scalar
from jaxdiff.ops.upsample import depth_to_space, patch_conv_transpose, upsample_conv

__all__ = ["chunked_attention", "conv_general_dilated", "depth_to_space", "dot_product_attention", "group_norm_act",
           "layer_norm", "linear_attention_context", "linear_attention_output", "matmul", "patch_conv_transpose",
           "reference_attention", "spatial_broadcast", "tn_matmul", "upsample_conv", "with_scalar", "xla_attention"]
