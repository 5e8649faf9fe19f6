"""Micro-benchmarks behind choices in `jaxdiff/models/layers.py`: each kernel against the plain formulation it
replaces, same inputs, same outputs (checked), median wall time of jitted calls on this machine.

    python -m benchmarks.micro            # prints a markdown table
    python -m benchmarks.micro --limits   # what bounds jaxdiff on this machine (throughput, compile time)

Rows: `tn_matmul` (a^T b) vs `einsum("...km,...kn->...mn")` at the shapes of attention's dV / dK and of Dense kernel
gradients in the benchmark models; `max_pool2` vs `nn.max_pool`, forward + backward; `PatchConvTranspose` vs
`nn.ConvTranspose`, forward + backward; the native Winograd 3x3 convolution (`jaxdiff.kernels`, on the CPU backend)
vs XLA's, forward and forward + backward. Then two alternatives that were tried and rejected, in the "jaxdiff ms"
column: Winograd F(2x2, 3x3) convolutions written in JAX against XLA's convolution, and a flash-style attention
backward (probabilities recomputed from the log-sum-exp) against `dot_product_attention`'s (probabilities saved).
"""
from __future__ import annotations

import itertools
import os
import time

import jaxdiff.platform  # (XLA:CPU defaults: `main` applies them before JAX starts)
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.kernels import conv as kernel_conv
from jaxdiff.models import layers

TN_SHAPES = [  # (a, b, where it occurs)
    ((8, 4, 256, 256), (8, 4, 256, 16), "unet2d attention dV: p^T g"),
    ((16, 4, 256, 256), (16, 4, 256, 32), "MedSegDiff attention dV"),
    ((16384, 128), (16384, 16), "Dense kernel gradient x^T g, wide input"),
    ((16384, 16), (16384, 384), "Dense kernel gradient x^T g, wide output"),
]


NATIVE_CONV_SHAPES = (((2, 64, 64, 32), 32), ((4, 32, 32, 64), 64), ((8, 64, 64, 96), 32))  # DDIM per device; train
NHWC = ("NHWC", "HWIO", "NHWC")


def xla_conv3x3(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def native_conv3x3(x, w):
    return kernel_conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def _median_call_ms(call, repeats: int) -> float:
    """Median wall time of `call()` in ms over `repeats` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def median_ms(fn, *args, repeats: int = 40) -> float:
    jitted = jax.jit(fn)
    return _median_call_ms(lambda: jax.block_until_ready(jitted(*args)), repeats)


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
    conv_grad = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))  # noqa: E731
    for shape, k in NATIVE_CONV_SHAPES:
        x, w = jax.random.normal(next(key), shape), jax.random.normal(next(key), (3, 3, shape[-1], k)) * 0.05
        np.testing.assert_allclose(native_conv3x3(x, w), xla_conv3x3(x, w), rtol=1e-4, atol=1e-4)
        yield (f"3x3 conv, native Winograd, forward, x {shape} -> {k}", median_ms(xla_conv3x3, x, w),
               median_ms(native_conv3x3, x, w))
        yield (f"3x3 conv, native Winograd, value and gradients, x {shape} -> {k}",
               median_ms(conv_grad(xla_conv3x3), x, w), median_ms(conv_grad(native_conv3x3), x, w))


_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def winograd_conv3x3(x, w):
    """Rejected alternative: 3x3 "SAME" conv of (B, H, W, C) (H, W even) as Winograd F(2x2, 3x3): 16 products of
    (B H W / 4, C) x (C, K) instead of 36 multiply-adds per 2x2 output tile, plus tile transforms."""
    b, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    tiles = jnp.stack([jnp.stack([xp[:, i:i + h:2, j:j + wd:2] for j in range(4)]) for i in range(4)])
    v = jnp.einsum("ai,bj,ijnhwc->abnhwc", _BT, _BT, tiles)
    m = jnp.einsum("abnhwc,abck->abnhwk", v, jnp.einsum("ai,ijck,bj->abck", _G, w, _G))
    y = jnp.einsum("pa,qb,abnhwk->nhpwqk", _AT, _AT, m)
    return y.reshape(b, h, wd, w.shape[-1])


def _flash_fwd(q, k, v):
    s = layers._scores(q, k)  # noqa: SLF001
    m = s.max(-1, keepdims=True)
    e = jnp.exp(s - m)
    total = e.sum(-1, keepdims=True)
    out = jnp.einsum("bhqk,bhkd->bhqd", e, v) / total
    return out, (q, k, v, out, m + jnp.log(total))


def _flash_bwd(res, g):
    q, k, v, out, lse = res
    p = jnp.exp(layers._scores(q, k) - lse)  # noqa: SLF001
    dp = jnp.einsum("bhqd,bhkd->bhqk", g, v)
    ds = p * (dp - jnp.sum(g * out, -1, keepdims=True)) * q.shape[-1] ** -0.5
    return jnp.einsum("bhqk,bhkd->bhqd", ds, k), layers.tn_matmul(ds, q), layers.tn_matmul(p, g)


flash_attention = jax.custom_vjp(lambda q, k, v: _flash_fwd(q, k, v)[0])
flash_attention.defvjp(_flash_fwd, _flash_bwd)


def alternatives():
    key = iter(jax.random.split(jax.random.key(1), 16))
    x = jax.random.normal(next(key), (16, 32, 32, 16))
    ref = nn.ConvTranspose(32, (2, 2), strides=(2, 2), padding="VALID")
    params = ref.init(next(key), x)

    def grad_of(apply):
        return jax.grad(lambda p, x: jnp.sum(jnp.sin(apply(p, x))), argnums=(0, 1))

    new = layers.PatchConvTranspose(32)
    np.testing.assert_allclose(new.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    yield ("2x2 stride-2 transposed conv (TransformerUNet up4), value and gradients, x (16, 32, 32, 16) -> 32",
           median_ms(grad_of(ref.apply), params, x), median_ms(grad_of(new.apply), params, x))
    conv = xla_conv3x3
    for shape, k in (((4, 64, 64, 32), 32), ((4, 32, 32, 64), 64)):  # unet2d's DDIM batch, levels 1 and 2
        x, w = jax.random.normal(next(key), shape), jax.random.normal(next(key), (3, 3, shape[-1], k)) * 0.05
        np.testing.assert_allclose(winograd_conv3x3(x, w), conv(x, w), rtol=1e-4, atol=1e-4)
        fb = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))  # noqa: E731
        yield (f"rejected: Winograd 3x3 conv, forward, x {shape} -> {k}", median_ms(conv, x, w),
               median_ms(winograd_conv3x3, x, w))
        yield (f"rejected: Winograd 3x3 conv, value and gradients, x {shape} -> {k}", median_ms(fb(conv), x, w),
               median_ms(fb(winograd_conv3x3), x, w))
    q, k_, v = (jax.random.normal(next(key), (16, 4, 256, 32)) for _ in range(3))
    fb = lambda f: jax.grad(lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v))), argnums=(0, 1, 2))  # noqa: E731
    saved = layers._attention  # noqa: SLF001  (heads-major, probabilities saved)
    np.testing.assert_allclose(fb(flash_attention)(q, k_, v)[0], fb(saved)(q, k_, v)[0], rtol=1e-3, atol=1e-4)
    yield ("rejected: flash-style attention backward, value and gradients, (16, 4 heads, 256, 32) (MedSegDiff)",
           median_ms(fb(saved), q, k_, v), median_ms(fb(flash_attention), q, k_, v))


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores JAX's CPU client uses
    return torch


def _matmul_rate(what: str, n: int, make, multiply, slow_s: float = 1.0):
    """One (what, GFLOP/s) row for an n^3 product of `make(n)` with itself; a dtype this CPU has no fast path for
    (PyTorch's bf16 on AVX2 runs at ~0.3 GFLOP/s, a minute per 2048^3 product) is measured at n / 4 instead."""
    a = make(n)
    t0 = time.perf_counter()
    multiply(a)  # JAX: includes the compile, so a slow first call only shrinks n when the product itself is slow
    if time.perf_counter() - t0 > slow_s and n >= 256:
        t0 = time.perf_counter()
        multiply(a)
        if time.perf_counter() - t0 > slow_s:
            n //= 4
            a = make(n)
    yield f"{what}, {n}^3", 2 * n ** 3 / _median_call_ms(lambda: multiply(a), 10) / 1e6, "GFLOP/s"


CONV_SHAPES = (((8, 64, 64, 96), 32), ((8, 64, 64, 64), 32), ((8, 32, 32, 128), 64))  # unet2d's training step


def limits(n: int = 2048, conv_shapes=CONV_SHAPES, init_config=None):
    """(what, value, unit) rows on what bounds jaxdiff here: n^3 matmul throughput per dtype (and NumPy's float32
    BLAS, the CPU's headroom), a 3x3 convolution's forward / input gradient / weight gradient at `conv_shapes`
    ((x shape, output channels); JAX and, when installed, PyTorch eager, NCHW as in the benchmark's twins, whose
    gradients are checked against JAX's), and the compile time of a UNet's init (default: configs/quickstart.py at
    batch 8) at XLA's default options and at `jaxdiff.platform.ONE_SHOT_CPU_COMPILER_OPTIONS`."""
    torch = _torch()
    for dtype in ("float32", "bfloat16"):
        jitted = jax.jit(jnp.matmul)
        yield from _matmul_rate(f"JAX matmul, {dtype}", n, lambda m: jnp.ones((m, m), dtype),
                                lambda a: jax.block_until_ready(jitted(a, a)))
        if torch is not None:
            yield from _matmul_rate(f"PyTorch matmul, {dtype}", n,
                                    lambda m: torch.ones(m, m, dtype=getattr(torch, dtype)), lambda t: t @ t)
    # The CPU's own fp32 headroom: NumPy's BLAS (OpenBLAS in the wheels) on the same product.
    yield from _matmul_rate("NumPy (its BLAS) matmul, float32", n, lambda m: np.ones((m, m), np.float32),
                            lambda a: a @ a)
    key = iter(jax.random.split(jax.random.key(2), 9))
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + 1.0
    for shape, k in conv_shapes:
        x, w = jax.random.normal(next(key), shape), jax.random.normal(next(key), (3, 3, shape[-1], k)) * 0.05
        g = jax.random.normal(next(key), (*shape[:-1], k))
        vjp = lambda x, w, g: jax.vjp(conv, x, w)[1](g)  # noqa: E731
        what = f"3x3 conv x {shape} -> {k}"
        yield f"JAX {what}: forward", median_ms(conv, x, w), "ms"
        yield f"JAX {what}: input gradient", median_ms(lambda x, w, g: vjp(x, w, g)[0], x, w, g), "ms"
        yield f"JAX {what}: weight gradient", median_ms(lambda x, w, g: vjp(x, w, g)[1], x, w, g), "ms"
        if torch is not None:
            tx, tg = (torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy()) for a in (x, g))
            tw = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy())
            backward = lambda mask: torch.ops.aten.convolution_backward(  # noqa: E731
                tg, tx, tw, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
            dx, dw = (backward([True, True, False])[i].numpy() for i in (0, 1))
            for ours, theirs in zip(vjp(x, w, g), (dx.transpose(0, 2, 3, 1), dw.transpose(2, 3, 1, 0))):
                ours = np.asarray(ours)  # sums of up to B H W terms: compared relative to the largest entry
                assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(ours).max(), what
            for part, call in (("forward", lambda: torch.nn.functional.conv2d(tx, tw, padding=1)),
                               ("input gradient", lambda: backward([True, False, False])),
                               ("weight gradient", lambda: backward([False, True, False]))):
                yield f"PyTorch {what}: {part}", _median_call_ms(call, 20), "ms"
    from configs import quickstart
    from jaxdiff import tasks
    config = init_config or quickstart.get_config()
    task = tasks.build(config)
    batch = {"image": np.zeros((8, config.data.image_size, config.data.image_size, config.data.channels), np.float32)}
    init = jax.jit(task.init)
    for name, options in (("XLA default", None), ("one-shot options", jaxdiff.platform.ONE_SHOT_CPU_COMPILER_OPTIONS)):
        lowered = init.lower(jax.random.key(len(name)), batch)
        t0 = time.perf_counter()
        lowered.compile(compiler_options=options)
        yield f"{config.model.name} init ({config.data.image_size}^2), compile ({name})", time.perf_counter() - t0, "s"


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limits", action="store_true", help="throughput and compile-time facts (`limits()`)")
    args = parser.parse_args()
    jaxdiff.platform.setup(compilation_cache=False)  # as the CLIs run: XLA:CPU flags, huge-page malloc
    if args.limits:
        print("| measurement | value | unit |\n|---|---:|---|")
        for name, value, unit in limits():
            print(f"| {name} | {value:.3g} | {unit} |", flush=True)
        return
    print("| operation | plain ms | jaxdiff ms | speedup |\n|---|---:|---:|---:|")
    for name, plain, ours in itertools.chain(rows(), alternatives()):
        print(f"| {name} | {plain:.2f} | {ours:.2f} | {plain / ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
