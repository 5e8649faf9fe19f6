"""`conv_general_dilated`: `lax.conv_general_dilated` (the reference) with the native Winograd F(2x2, 3x3) kernel
(Lavin & Gray 2016; `jaxdiff.platform.native`) for the 3x3 convolutions of the 2D UNets in CPU lowerings.

A convolution is eligible when it is a float32, 2D, NHWC x HWIO, 3x3, stride-1, padding-1, undilated, ungrouped
convolution with even H and W and C, O multiples of the native kernel's vector width (8 or 16; 0, so nothing is
eligible, where the kernel is switched off or cannot be built); anything else is `lax.conv_general_dilated`
unchanged. An eligible convolution is `lax.platform_dependent(cpu=Winograd FFI call, default=XLA convolution)`: the
choice is made when the program is lowered, so a program traced on any host lowers for GPU/TPU (e.g. `jax.export`
for "cuda") to XLA's convolution and for the CPU to the native kernel. The VJP's input gradient is itself a
3x3 convolution (of the cotangent with the flipped, transposed kernel) and takes the same path; the kernel gradient
is XLA's. Results match XLA's convolution to float32 rounding (relative error ~1e-6, tested).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff.platform import native

# Winograd F(2x2, 3x3) kernel transform G (4x3): U = G w G^T per (input, output) channel pair.
WINOGRAD_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)
_NHWC = ("NHWC", "HWIO", "NHWC")
WINOGRAD_GG = np.kron(WINOGRAD_G, WINOGRAD_G)  # (16, 9): vec(G w G^T) = (G kron G) vec(w) per channel pair


def winograd_weights(w):
    """(3, 3, C, O) HWIO kernel -> (16, C, O) transformed kernel G w G^T, row-major over the 4x4 positions: one
    (16, 9) x (9, C O) matmul on the contiguous kernel (the einsum with G on each side lowers to two dots with
    transposes between them, and a stack of adds to a concatenate fusion; both cost more than the conv at a small
    batch)."""
    c, o = w.shape[2:]
    u = jnp.dot(jnp.asarray(WINOGRAD_GG), w.reshape(9, c * o), precision=lax.Precision.HIGHEST)
    return u.reshape(16, c, o)


def reference_conv3x3(x, w):
    """(B, H, W, C) x (3, 3, C, O) -> (B, H, W, O), stride 1, zero padding 1: XLA's convolution."""
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)


def _ffi_conv3x3(x, u):
    """(B, H, W, C) x (16, C, O) transformed kernel -> (B, H, W, O): the FFI call."""
    out = jax.ShapeDtypeStruct((*x.shape[:-1], u.shape[-1]), x.dtype)
    return jax.ffi.ffi_call(native.TARGET, out, vmap_method="sequential")(x, u)


def _batch_sharded(mesh, x_sharding):
    """x's sharding kept on the batch axis only (a 3x3 conv needs whole images and all channels per device)."""
    spec = x_sharding.spec if isinstance(x_sharding, NamedSharding) else P()
    return NamedSharding(mesh, P(spec[0] if len(spec) else None, None, None, None))


def _partition(mesh, arg_shapes, result_shape):
    x_sh = _batch_sharded(mesh, arg_shapes[0].sharding)
    return mesh, _ffi_conv3x3, x_sh, (x_sh, NamedSharding(mesh, P()))


# The SPMD partitioner knows nothing of a custom call and would all-gather a batch-sharded input, run the whole
# batch on every device and slice the result (measured: DDIM over 2 CPU devices 25% slower than on one); this
# tells it the call is batch-parallel: each device convolves its own images.
_ffi_conv3x3_spmd = custom_partitioning(_ffi_conv3x3)
_ffi_conv3x3_spmd.def_partition(
    partition=_partition,
    infer_sharding_from_operands=lambda mesh, arg_shapes, shape: _batch_sharded(mesh, arg_shapes[0].sharding),
    sharding_rule="b h w c, k c o -> b h w o", need_replication_factors=("h", "w", "c", "k", "o"))


@jax.custom_batching.custom_vmap
def _native_conv3x3(x, w):
    if not native.vector_width():  # registers the FFI target (built on first use)
        return reference_conv3x3(x, w)
    return _ffi_conv3x3_spmd(x, winograd_weights(w))


@_native_conv3x3.def_vmap
def _native_conv3x3_vmap(axis_size, in_batched, x, w):
    """vmap (custom_partitioning has no batching rule): images of all vmapped batches in one call; a vmapped kernel
    (one per batch) falls back to XLA's convolution."""
    x_batched, w_batched = in_batched
    if w_batched:
        return jax.vmap(reference_conv3x3, (0 if x_batched else None, 0))(x, w), True
    if not x_batched:
        x = jnp.broadcast_to(x, (axis_size, *x.shape))
    y = _native_conv3x3(x.reshape(-1, *x.shape[2:]), w)
    return y.reshape(*x.shape[:-1], w.shape[-1]), True


@jax.custom_vjp
def conv3x3(x, w):
    """(B, H, W, C) x (3, 3, C, O) -> (B, H, W, O), stride 1, zero padding 1: the native kernel in CPU lowerings,
    XLA's convolution on any other (chosen when lowering). Call only where `native_eligible` holds."""
    return lax.platform_dependent(x, w, cpu=_native_conv3x3, default=reference_conv3x3)


def _conv3x3_fwd(x, w):
    return conv3x3(x, w), (x, w)


def _conv3x3_bwd(res, g):
    x, w = res
    dx = conv3x3(g, jnp.flip(w, (0, 1)).swapaxes(2, 3))  # (B, H, W, O) x (3, 3, O, C): the transposed conv
    _, kernel_vjp = jax.vjp(lambda k: reference_conv3x3(x, k), w)
    return dx, kernel_vjp(g)[0]


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _is_pad1(padding) -> bool:
    if isinstance(padding, str):
        return padding.upper() == "SAME"  # 3x3 stride 1: (1, 1) per axis
    return [tuple(p) for p in padding] == [(1, 1), (1, 1)]


def native_eligible(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                    feature_group_count=1, batch_group_count=1, preferred_element_type=None) -> bool:
    """Whether this convolution runs on the native Winograd kernel (see the module docstring)."""
    if lhs.ndim != 4 or lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        return False
    if preferred_element_type not in (None, jnp.float32) or feature_group_count != 1 or batch_group_count != 1:
        return False
    if tuple(window_strides) != (1, 1) or any(d is not None and tuple(d) != (1, 1)
                                              for d in (lhs_dilation, rhs_dilation)):
        return False
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC) or rhs.shape[:2] != (3, 3):
        return False
    _, h, w, c = lhs.shape
    if h % 2 or w % 2 or not _is_pad1(padding):
        return False
    vw = native.vector_width()  # builds the kernel on first use; 0 if unavailable
    return vw > 0 and c % vw == 0 and rhs.shape[3] % vw == 0


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """Drop-in for `lax.conv_general_dilated` (same arguments, e.g. `nn.Conv(..., conv_general_dilated=this)`)."""
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
            batch_group_count)
    if native_eligible(*args, preferred_element_type=preferred_element_type):
        return conv3x3(lhs, rhs)
    return lax.conv_general_dilated(*args, precision=precision, preferred_element_type=preferred_element_type)
