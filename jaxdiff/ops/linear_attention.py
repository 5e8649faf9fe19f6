"""The two products of linear attention (Katharopoulos et al. 2020, in the form of lucidrains' `LinearAttention`
that MedSegDiff uses), each a per-head reference beside its XLA:CPU form.

Per head h, with q_h softmaxed over its features and scaled, k_h softmaxed over the N positions and v_h = x W_v:
  context_h = k_h^T v_h  (d x e)                       `linear_attention_context(k, x, w_v)`
  out = concat_h(q_h context_h) W_out  (N x C)         `linear_attention_output(q, context, w_out)`

The CPU forms never form v or the per-head outputs: the per-head contexts are the diagonal blocks of
k_flat^T v_flat = (k_flat^T x) W_v, a product over the N positions with C columns instead of heads e, and the
output is q_flat (blockdiag(context) W_out), one product over the positions with C columns. Each public op is
`lax.platform_dependent(cpu=tuned_*, default=reference_*)`, chosen when the program is lowered.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxdiff.ops.products import tuned_matmul, tuned_tn_matmul


def reference_linear_attention_context(k, x, w_v):
    """context_h = k_h^T v_h with v = x w_v: k (B, N, heads, d), x (B, N, C), w_v (C, heads e) -> (B, heads, d, e)."""
    b, n, heads, _ = k.shape
    v = jnp.matmul(x, w_v).reshape(b, n, heads, -1)
    return jnp.einsum("bnhd,bnhe->bhde", k, v)


def tuned_linear_attention_context(k, x, w_v):
    """`reference_linear_attention_context` as the diagonal blocks of (k_flat^T x) w_v (B, heads d, heads e)."""
    b, n, heads, d = k.shape
    full = tuned_matmul(tuned_tn_matmul(k.reshape(b, n, heads * d), x), w_v)
    blocks = jnp.diagonal(full.reshape(b, heads, d, heads, -1), axis1=1, axis2=3)  # (B, d, e, heads)
    return blocks.transpose(0, 3, 1, 2)


def linear_attention_context(k, x, w_v):
    """The per-head contexts k_h^T v_h, v = x w_v: k (B, N, heads, d), x (B, N, C), w_v (C, heads e) ->
    (B, heads, d, e) (`tuned_linear_attention_context` on the CPU)."""
    return lax.platform_dependent(k, x, w_v, cpu=tuned_linear_attention_context,
                                  default=reference_linear_attention_context)


def reference_linear_attention_output(q, context, w_out):
    """concat_h(q_h context_h) w_out: q (B, N, heads, d), context (B, heads, d, e), w_out (heads e, C) -> (B, N, C)."""
    b, n = q.shape[:2]
    return jnp.matmul(jnp.einsum("bnhd,bhde->bnhe", q, context).reshape(b, n, -1), w_out)


def tuned_linear_attention_output(q, context, w_out):
    """`reference_linear_attention_output` as q_flat (blockdiag(context) w_out)."""
    b, n, heads, d = q.shape
    eye = jnp.eye(heads, dtype=context.dtype)
    block_diagonal = jnp.einsum("bhde,hg->bhdge", context, eye).reshape(b, heads * d, -1)  # (B, heads d, heads e)
    return tuned_matmul(q.reshape(b, n, heads * d), tuned_matmul(block_diagonal, w_out))


def linear_attention_output(q, context, w_out):
    """concat_h(q_h context_h) w_out: q (B, N, heads, d), context (B, heads, d, e), w_out (heads e, C) -> (B, N, C)
    (`tuned_linear_attention_output` on the CPU)."""
    return lax.platform_dependent(q, context, w_out, cpu=tuned_linear_attention_output,
                                  default=reference_linear_attention_output)
