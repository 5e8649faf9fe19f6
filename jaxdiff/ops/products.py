"""The transposed products and a scalar operand, each a plain reference beside its XLA:CPU form.

- `tn_matmul(a, b)` = a^T b over the last two axes (a weight gradient x^T g, attention's p^T g);
- `matmul(a, b)` = a b, whose derivative with respect to b (a^T g) is a `tn_matmul`;
- `with_scalar(x, value)` = (x, value as a 0-d array of x's dtype), for `x * s`-style uses.

Each public op is `lax.platform_dependent(cpu=tuned_*, default=reference_*)`: the choice is made when the program
is lowered, so one traced program is right on every platform.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _swap(a):
    return jnp.swapaxes(a, -1, -2)


def reference_tn_matmul(a, b):
    """a^T b: a (..., K, M), b (..., K, N) -> (..., M, N), as written."""
    return jnp.einsum("...km,...kn->...mn", a, b)


@jax.custom_vjp
def tuned_tn_matmul(a, b):
    """`reference_tn_matmul` in the form XLA:CPU runs fast: when b is the smaller operand (attention: p (N, M) and
    g (N, d)) ((b^T) a)^T, with b transposed and the small result transposed back behind optimisation barriers (XLA
    otherwise folds the transposes back into the product); the direct product when a is the smaller one
    (`python -m benchmarks.micro` compares them). The derivative avoids the form (custom VJP: a b^T products)."""
    if a.size <= b.size:
        return jnp.einsum("...km,...kn->...mn", a, b)
    return _swap(lax.optimization_barrier(jnp.matmul(lax.optimization_barrier(_swap(b)), a)))


def _tn_matmul_fwd(a, b):
    return tuned_tn_matmul(a, b), (a, b)


def _tn_matmul_bwd(res, g):
    a, b = res  # out = a^T b: da = b g^T (K, N)(N, M), db = a g (K, M)(M, N)
    return jnp.matmul(b, _swap(g)).astype(a.dtype), jnp.matmul(a, g).astype(b.dtype)


tuned_tn_matmul.defvjp(_tn_matmul_fwd, _tn_matmul_bwd)


def tn_matmul(a, b):
    """a^T b over the last two axes: a (..., K, M), b (..., K, N) -> (..., M, N) (`tuned_tn_matmul` on the CPU)."""
    return lax.platform_dependent(a, b, cpu=tuned_tn_matmul, default=reference_tn_matmul)


def reference_matmul(a, b):
    """a b over the last two axes: (..., M, K) x (..., K, N) -> (..., M, N)."""
    return jnp.matmul(a, b)


@jax.custom_vjp
def tuned_matmul(a, b):
    """`jnp.matmul` whose derivative with respect to b (a^T g) is computed by `tuned_tn_matmul`."""
    return jnp.matmul(a, b)


def _matmul_fwd(a, b):
    return jnp.matmul(a, b), (a, b)


def _matmul_bwd(res, g):
    a, b = res
    db = tuned_tn_matmul(a, g)
    return jnp.matmul(g, _swap(b)).astype(a.dtype), jnp.sum(db, axis=tuple(range(db.ndim - b.ndim))).astype(b.dtype)


tuned_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(a, b):
    """a b over the last two axes, (..., M, K) x (..., K, N) -> (..., M, N) (`tuned_matmul` on the CPU)."""
    return lax.platform_dependent(a, b, cpu=tuned_matmul, default=reference_matmul)


def reference_with_scalar(x, value: float):
    """(x, `value` as a 0-d array of x's dtype)."""
    return x, jnp.asarray(value, x.dtype)


def tuned_with_scalar(x, value: float):
    """`reference_with_scalar` through one optimisation barrier. XLA broadcasts a constant scalar to the full shape
    and merges identical broadcasts (CSE), so every layer of that shape shares one broadcast; XLA:CPU's YNNPACK
    fusions then materialise it and read it back (a full-size pass each). Tied to x by the barrier, the scalar is
    a distinct value per call and its broadcast stays fused."""
    return lax.optimization_barrier((x, jnp.asarray(value, x.dtype)))


def with_scalar(x, value: float):
    """(x, value as a 0-d array of x's dtype), for `x * s`-style uses (`tuned_with_scalar` on the CPU)."""
    return lax.platform_dependent(x, cpu=lambda x: tuned_with_scalar(x, value),
                                  default=lambda x: reference_with_scalar(x, value))
