"""Attention kernels per backend: `attention(q, k, v, xla)` picks, when the program is lowered, the Pallas flash
attention on TPU, cuDNN's flash attention on NVIDIA GPUs and `xla` (the caller's XLA form) elsewhere.

The choice is `lax.platform_dependent`, so one traced program lowers for any platform (`jax.export` for "tpu" or
"cuda" from a CPU host included) and each platform's lowering holds only its own branch. Which function each key
gets is decided in Python from the static shapes and dtypes:

- tpu: `jax.experimental.pallas.ops.tpu.flash_attention` (the `tpu_custom_call` Mosaic kernel; forward and its
  own backward kernels) when q, k, v are float32 or bfloat16 of one dtype, the query and key lengths N, M are
  multiples of 128 (the kernel's default block sizes), and the head size d is at most 128 or a multiple of 128;
  otherwise `xla`. The kernel runs per (batch, head): under a batch- or head-sharded jit it is partitioned over
  those axes (`custom_partitioning`; the SPMD partitioner cannot split a Mosaic call itself), and a vmapped call
  folds the vmapped axis into the batch.
- cuda: `jax.nn.dot_product_attention(implementation="cudnn")` (the `__cudnn$fmha...` custom calls) when q, k, v
  are float16 or bfloat16 of one dtype and d is a multiple of 8 and at most 128; otherwise, and when this process
  has no cuDNN (jax without its CUDA plugin traces the cuDNN form only where cuDNN is found), jax's XLA form
  `jax.nn.dot_product_attention(implementation="xla")` (what GPUs ran before).
- rocm: `xla_gpu_attention` (as before).
- every other platform (CPU): `xla`, unchanged.

Shapes: q (B, N, heads, d), k and v (B, M, heads, d) -> (B, N, heads, d); scale 1/sqrt(d), no mask.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash
from jax.sharding import NamedSharding, PartitionSpec as P

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


def attention(q, k, v, xla):
    """softmax(q k^T / sqrt(d)) v with the backend's kernel: q (B, N, heads, d), k, v (B, M, heads, d) ->
    (B, N, heads, d). `xla(q, k, v)` is the form for the platforms without a kernel (CPU) and the TPU fallback."""
    tpu = tpu_flash_attention if tpu_flash_supported(q, k, v) else xla
    cuda = cudnn_attention if cudnn_supported(q, k, v) else xla_gpu_attention
    return jax.lax.platform_dependent(q, k, v, tpu=tpu, cuda=cuda, rocm=xla_gpu_attention, default=xla)
