"""Attention, softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017), with each backend's kernel beside the reference.

`dot_product_attention(q, k, v)` picks, when the program is lowered, the Pallas flash attention on TPU, cuDNN's
flash attention on NVIDIA GPUs, the hand-tuned XLA:CPU form (`xla_attention`) on the CPU and the plain
`reference_attention` elsewhere and wherever a kernel does not take the operands.

The choice is `lax.platform_dependent`, so one traced program lowers for any platform (`jax.export` for "tpu" or
"cuda" from a CPU host included) and each platform's lowering holds only its own branch. Which function each key
gets is decided in Python from the static shapes and dtypes:

- tpu: `jax.experimental.pallas.ops.tpu.flash_attention` (the `tpu_custom_call` Mosaic kernel; forward and its
  own backward kernels) when q, k, v are float32 or bfloat16 of one dtype, the query and key lengths N, M are
  multiples of 128 (the kernel's default block sizes), and the head size d is at most 128 or a multiple of 128;
  otherwise `reference_attention`. The kernel runs per (batch, head): under a batch- or head-sharded jit it is
  partitioned over those axes (`custom_partitioning`; the SPMD partitioner cannot split a Mosaic call itself), and
  a vmapped call folds the vmapped axis into the batch.
- cuda: `jax.nn.dot_product_attention(implementation="cudnn")` (the `__cudnn$fmha...` custom calls) when q, k, v
  are float16 or bfloat16 of one dtype and d is a multiple of 8 and at most 128; otherwise, and when this process
  has no cuDNN (jax without its CUDA plugin traces the cuDNN form only where cuDNN is found), jax's XLA form
  `jax.nn.dot_product_attention(implementation="xla")`.
- rocm: `xla_gpu_attention`.
- cpu: `xla_attention`.
- every other platform: `reference_attention`.

Shapes: q (B, N, heads, d), k and v (B, M, heads, d) -> (B, N, heads, d); scale 1/sqrt(d), no mask.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff.ops.products import tuned_tn_matmul, tuned_with_scalar

FLASH_BLOCK = 128  # the Pallas kernel's default block sizes (queries, keys, and the backward's blocks)


def tpu_flash_supported(q, k, v) -> bool:
    """Whether the Pallas TPU flash kernel takes these (B, N, heads, d) operands (see the module docstring)."""
    n, m, d = q.shape[1], k.shape[1], q.shape[-1]
    return (q.dtype in (jnp.float32, jnp.bfloat16) and q.dtype == k.dtype == v.dtype and k.shape == v.shape
            and n % FLASH_BLOCK == 0 and m % FLASH_BLOCK == 0 and (d <= 128 or d % 128 == 0))


def cudnn_supported(q, k, v) -> bool:
    """Whether cuDNN flash attention takes these (B, N, heads, d) operands (dtype and head size; see above)."""
    d = q.shape[-1]
    return (q.dtype in (jnp.float16, jnp.bfloat16) and q.dtype == k.dtype == v.dtype and k.shape == v.shape
            and d % 8 == 0 and d <= 128)


def xla_gpu_attention(q, k, v):
    """jax's XLA attention (B, N, heads, d) -> (B, N, heads, d): the GPU fallback."""
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def cudnn_attention(q, k, v):
    """cuDNN flash attention (B, N, heads, d) -> (B, N, heads, d), or `xla_gpu_attention` where jax finds no
    cuDNN (or none that supports it) when tracing: jax checks the cuDNN version in Python, before emitting the
    custom call, so a process without jax's CUDA plugin cannot trace this form."""
    try:
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    except (RuntimeError, NotImplementedError):
        return xla_gpu_attention(q, k, v)


def _heads_major_spec(sharding, rank: int):
    """A (B, heads, ...) operand's sharding kept on its batch and heads axes, the rest replicated."""
    spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
    spec = spec + (None,) * (2 - len(spec))
    return P(spec[0], spec[1], *(None,) * (rank - 2))


def per_batch_and_head(fn, in_ranks, out_ranks, rule: str, partitioned: bool = True):
    """`fn` (operands and results (B, heads, ...) of the given ranks; a tuple of results) as a call the SPMD
    partitioner splits over the leading (batch, heads) axes as the first operand is sharded there (`rule`: its
    Shardy einsum-like rule with factors n, m, d replicated), and that vmap folds into the batch axis.
    partitioned=False leaves out the partitioning (for Pallas's interpret mode, whose callbacks it cannot lower).
    """
    def shardings(mesh, arg_shapes):
        return [NamedSharding(mesh, _heads_major_spec(arg_shapes[0].sharding, r)) for r in out_ranks]

    def partition(mesh, arg_shapes, result_shape):
        ins = [NamedSharding(mesh, _heads_major_spec(arg_shapes[0].sharding, r)) for r in in_ranks]
        return mesh, fn, tuple(shardings(mesh, arg_shapes)), tuple(ins)

    spmd = custom_partitioning(fn) if partitioned else fn
    if partitioned:
        spmd.def_partition(
            partition=partition, sharding_rule=rule, need_replication_factors=("n", "d", "m"),
            infer_sharding_from_operands=lambda mesh, arg_shapes, _: tuple(shardings(mesh, arg_shapes)))

    @jax.custom_batching.custom_vmap
    def call(*args):
        return spmd(*args)

    @call.def_vmap
    def _vmap(axis_size, in_batched, *args):
        args = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, b in zip(args, in_batched)]
        outs = call(*(a.reshape(-1, *a.shape[2:]) for a in args))
        return tuple(o.reshape(axis_size, -1, *o.shape[1:]) for o in outs), (True,) * len(outs)

    return call


@functools.cache
def _flash_calls(sm_scale: float, partitioned: bool):
    """(forward -> (o, l, m), backward -> (dq, dk, dv)) Pallas calls, heads-major (B, h, N, d), for one scale."""
    blocks = pallas_flash.BlockSizes.get_default(0, 0, 0, 0, 0)

    def fwd(q, k, v):
        return pallas_flash._flash_attention(q, k, v, None, None, True, False, sm_scale, blocks, False)

    def bwd(q, k, v, o, l, m, g):
        return pallas_flash._flash_attention_bwd(False, False, sm_scale, blocks, False,
                                                  (q, k, v, None, None, o, l, m), g)[:3]

    return (per_batch_and_head(fwd, (4, 4, 4), (4, 3, 3), "b h n d, b h m d, b h m d -> b h n d, b h n, b h n",
                               partitioned),
            per_batch_and_head(bwd, (4, 4, 4, 4, 3, 3, 4), (4, 4, 4),
                               "b h n d, b h m d, b h m d, b h n d, b h n, b h n, b h n d "
                               "-> b h n d, b h m d, b h m d", partitioned))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _flash_heads_major(q, k, v, sm_scale, partitioned):
    return _flash_calls(sm_scale, partitioned)[0](q, k, v)[0]


def _flash_heads_major_fwd(q, k, v, sm_scale, partitioned):
    o, l, m = _flash_calls(sm_scale, partitioned)[0](q, k, v)
    return o, (q, k, v, o, l, m)


def _flash_heads_major_bwd(sm_scale, partitioned, res, g):
    return tuple(_flash_calls(sm_scale, partitioned)[1](*res, g))


_flash_heads_major.defvjp(_flash_heads_major_fwd, _flash_heads_major_bwd)


def tpu_flash_attention(q, k, v, partitioned: bool = True):
    """The Pallas TPU flash attention (B, N, heads, d) -> (B, N, heads, d), scale 1/sqrt(d); operands must pass
    `tpu_flash_supported`. Runs on a TPU, or anywhere under `pltpu.force_tpu_interpret_mode()` with
    partitioned=False (see `per_batch_and_head`)."""
    heads_major = lambda a: a.swapaxes(1, 2)  # noqa: E731
    return heads_major(_flash_heads_major(heads_major(q), heads_major(k), heads_major(v), q.shape[-1] ** -0.5,
                                          partitioned))


def reference_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v as written: q (B, N, heads, d), k, v (B, M, heads, d) -> (B, N, heads, d);
    scores and softmax in float32."""
    s = jnp.einsum("bnhd,bmhd->bhnm", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhnm,bmhd->bnhd", p.astype(v.dtype), v).astype(v.dtype)


def xla_attention(q, k, v):
    """`reference_attention` for (B, N, heads, d) operands in the XLA:CPU form: heads-major matmuls and a
    hand-written backward pass from the saved probabilities (XLA:CPU's differentiation of the library's softmax
    is slower, see benchmarks/README.md)."""
    heads_major = lambda a: a.swapaxes(1, 2)  # noqa: E731  (B, N, h, d) <-> (B, h, N, d)
    return heads_major(_attention(heads_major(q), heads_major(k), heads_major(v)))


def _scores(q, k):
    """(B, h, N, d), (B, h, M, d) -> (B, h, N, M) float32 scaled scores."""
    q, scale = tuned_with_scalar(q, q.shape[-1] ** -0.5)
    return jnp.einsum("bhqd,bhkd->bhqk", q * scale, k, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _attention(q, k, v):
    """Heads-major attention (B, h, N, d) -> (B, h, N, d); the primal normalises after the second matmul."""
    s = _scores(q, k)
    e = jnp.exp(s - s.max(-1, keepdims=True))
    out = jnp.einsum("bhqk,bhkd->bhqd", e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / e.sum(-1, keepdims=True)).astype(v.dtype)


def _attention_fwd(q, k, v):
    p = jax.nn.softmax(_scores(q, k), axis=-1)
    return jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v).astype(v.dtype), (q, k, v, p)


def _attention_bwd(res, g):
    q, k, v, p = res
    dv = tuned_tn_matmul(p.astype(g.dtype), g)
    dp = jnp.einsum("bhqd,bhkd->bhqk", g, v, preferred_element_type=jnp.float32)
    p, scale = tuned_with_scalar(p, q.shape[-1] ** -0.5)
    ds = (p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)) * scale).astype(q.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", ds, k), tuned_tn_matmul(ds, q), dv


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, xla=xla_attention, reference=reference_attention):
    """softmax(q k^T / sqrt(d)) v with the backend's kernel: q (B, N, heads, d), k, v (B, M, heads, d) ->
    (B, N, heads, d). `xla(q, k, v)` is the CPU form, `reference` the form of the platforms without a kernel and
    the TPU fallback."""
    tpu = tpu_flash_attention if tpu_flash_supported(q, k, v) else reference
    cuda = cudnn_attention if cudnn_supported(q, k, v) else xla_gpu_attention
    return lax.platform_dependent(q, k, v, cpu=xla, tpu=tpu, cuda=cuda, rocm=xla_gpu_attention, default=reference)


def dot_product_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v: q (B, N, heads, d), k and v (B, M, heads, d) -> (B, N, heads, d), with the
    kernel chosen when the program is lowered (see the module docstring)."""
    return attention(q, k, v)


def chunked_attention(q, k, v, chunk: int = 0):
    """`dot_product_attention` (B, N, heads, d) -> (B, N, heads, d), over query chunks of `chunk`
    positions when 0 < chunk < N (one rematerialised `lax.map` step per chunk: scores of chunk x N only; the
    queries are zero-padded to a multiple of the chunk and the padding dropped)."""
    b, n, heads, d = q.shape
    if not chunk or n <= chunk:
        return dot_product_attention(q, k, v)
    pad = -n % chunk
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    step = jax.checkpoint(lambda qc: dot_product_attention(qc, k, v))
    out = jax.lax.map(step, q.reshape(b, (n + pad) // chunk, chunk, heads, d).swapaxes(0, 1))
    return out.swapaxes(0, 1).reshape(b, n + pad, heads, d)[:, :n]


