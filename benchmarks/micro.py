"""Micro-benchmarks behind choices in `jaxdiff/models/layers.py`: each kernel against the plain formulation it
replaces, same inputs, same outputs (checked), median wall time of jitted calls on this machine.

    python -m benchmarks.micro            # prints a markdown table

Rows: `tn_matmul` (a^T b) vs `einsum("...km,...kn->...mn")` at the shapes of attention's dV / dK and of Dense kernel
gradients in the benchmark models; `max_pool2` vs `nn.max_pool`, forward + backward.
"""
from __future__ import annotations

import time

import jaxdiff  # noqa: F401  (XLA:CPU defaults before JAX starts)
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models import layers

TN_SHAPES = [  # (a, b, where it occurs)
    ((8, 4, 256, 256), (8, 4, 256, 16), "unet2d attention dV: p^T g"),
    ((16, 4, 256, 256), (16, 4, 256, 32), "MedSegDiff attention dV"),
    ((16384, 128), (16384, 16), "Dense kernel gradient x^T g, wide input"),
    ((16384, 16), (16384, 384), "Dense kernel gradient x^T g, wide output"),
]


def median_ms(fn, *args, repeats: int = 40) -> float:
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def rows():
    key = iter(jax.random.split(jax.random.key(0), 16))
    for a_shape, b_shape, where in TN_SHAPES:
        a, b = jax.random.normal(next(key), a_shape), jax.random.normal(next(key), b_shape)
        plain = lambda a, b: jnp.einsum("...km,...kn->...mn", a, b)  # noqa: E731
        np.testing.assert_allclose(layers.tn_matmul(a, b), plain(a, b), rtol=1e-4, atol=1e-3)
        yield (f"a^T b, a {a_shape}, b {b_shape} ({where})", median_ms(plain, a, b), median_ms(layers.tn_matmul, a, b))
    x = jax.random.normal(next(key), (16, 64, 64, 8))

    def grad_of(pool):
        return jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))

    plain_pool = lambda x: nn.max_pool(x, (2, 2), (2, 2))  # noqa: E731
    np.testing.assert_array_equal(grad_of(plain_pool)(x), grad_of(layers.max_pool2)(x))
    yield ("2x2 max pool, value and gradient, x (16, 64, 64, 8)", median_ms(grad_of(plain_pool), x),
           median_ms(grad_of(layers.max_pool2), x))


def main() -> None:
    print("| operation | plain ms | jaxdiff ms | speedup |\n|---|---:|---:|---:|")
    for name, plain, ours in rows():
        print(f"| {name} | {plain:.2f} | {ours:.2f} | {plain / ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
