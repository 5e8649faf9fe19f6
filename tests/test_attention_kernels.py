"""Attention kernels per backend (jaxdiff.models.attention_kernels): every model's attention lowers for TPU and
CUDA from this CPU with the kernel where the shapes allow and the XLA form where they do not; the Pallas flash
kernel (Pallas's TPU interpret mode on the CPU) agrees with the reference attention; the CPU form is unchanged."""
from __future__ import annotations

import importlib
import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.cudnn import fused_attention_stablehlo
from jax.experimental.pallas import tpu as pltpu

from jaxdiff import tasks
from jaxdiff.models import attention_kernels, layers
from conftest import run_python

PALLAS = "tpu_custom_call"
CUDNN = "__cudnn$fmhaSoftmax"
_EXPORT_CHECKS = [jax.export.DisabledSafetyCheck.custom_call(t)  # jax gives cuDNN calls no export guarantee
                  for t in (CUDNN, CUDNN + "Backward")]


def custom_calls(fn, *specs, platform: str) -> set[str]:
    """The custom-call targets in `fn`'s module lowered for `platform` (jax.export, no device needed)."""
    exported = jax.export.export(jax.jit(fn), platforms=(platform,), disabled_checks=_EXPORT_CHECKS)(*specs)
    return set(re.findall(r"custom_call @([\w$]+)", exported.mlir_module()))


@pytest.fixture
def cudnn_9(monkeypatch):
    """jax traces cuDNN attention only where it finds cuDNN (its version is read in Python before the custom call
    is emitted); this CPU-only jaxlib has none, so the CUDA lowering is checked as with cuDNN 9.10 installed."""
    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 91000)
    jax.clear_caches()  # jax caches the branches' traces per function: none from before or after the patch
    yield
    jax.clear_caches()


def _spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


# Models and their attention: unet (quickstart, 16x16 tokens, d=16), medsegdiff (16x16, d=32; its bottleneck
# transformer too) and the 3D unet (8^3 tokens, d=8) call `layers.dot_product_attention`; the cascade's base model
# (SAGAN self-attention, no 1/sqrt(d), and Swin window attention with its bias and mask) and transformer_unet
# (flax MultiHeadDotProductAttention with attention-weight dropout) have their own softmax forms: XLA everywhere.
# (config, image size override, train.precision, Pallas kernel on TPU, cuDNN kernel on CUDA)
MODELS = [("quickstart", None, "bf16", True, True), ("medsegdiff_tiny", None, "bf16", True, True),
          ("brain3d_tiny", None, "bf16", True, True), ("quickstart", None, "fp32", True, False),
          ("cascade_base64_tiny", None, "bf16", False, False), ("transformer_unet_tiny", None, "bf16", False, False),
          ("quickstart", 40, "bf16", False, True)]  # 40x40 images: 10x10 = 100 tokens, not a multiple of 128


@pytest.mark.parametrize("name,image_size,precision,tpu_kernel,cuda_kernel", MODELS)
def test_every_models_attention_lowers_for_tpu_and_cuda(name, image_size, precision, tpu_kernel, cuda_kernel,
                                                        cudnn_9):
    cfg = importlib.import_module(f"configs.{name}").get_config()
    cfg.train.precision = precision  # cuDNN flash attention needs fp16/bf16
    if image_size:
        cfg.data.image_size = image_size
    task = tasks.build(cfg)
    batch = task.example_batch(1)
    variables = jax.eval_shape(task.init, jax.random.key(0), batch)
    args, kwargs = task.model_inputs(batch)
    specs = jax.tree.map(lambda a: _spec(a.shape, a.dtype), (variables, args))
    forward = lambda variables, args: task.apply(variables, *args, **kwargs)  # noqa: E731
    tpu, cuda = (custom_calls(forward, *specs, platform=p) for p in ("tpu", "cuda"))
    assert (PALLAS in tpu) == tpu_kernel and CUDNN not in tpu
    assert (CUDNN in cuda) == cuda_kernel and PALLAS not in cuda


@pytest.mark.parametrize("shape,dtype,tpu_kernel,cuda_kernel", [
    ((2, 256, 4, 32), jnp.bfloat16, True, True),
    ((2, 256, 4, 32), jnp.float32, True, False),     # cuDNN: fp16/bf16 only
    ((2, 100, 4, 32), jnp.bfloat16, False, True),    # Pallas: N, M multiples of 128
    ((2, 256, 2, 12), jnp.bfloat16, True, False),    # cuDNN: head size a multiple of 8
    ((2, 256, 2, 160), jnp.bfloat16, False, False),  # Pallas: d <= 128 or a multiple of 128; cuDNN: d <= 128
    ((2, 256, 2, 256), jnp.float32, True, False),
])
def test_kernel_where_the_limits_allow_else_xla(shape, dtype, tpu_kernel, cuda_kernel, cudnn_9):
    s = _spec(shape, dtype)
    loss = lambda q, k, v: layers.dot_product_attention(q, k, v).astype(jnp.float32).sum()  # noqa: E731
    grads = jax.grad(loss, (0, 1, 2))
    assert (PALLAS in custom_calls(grads, s, s, s, platform="tpu")) == tpu_kernel
    cuda = custom_calls(grads, s, s, s, platform="cuda")
    assert (CUDNN in cuda) == cuda_kernel and ((CUDNN + "Backward") in cuda) == cuda_kernel
    assert not custom_calls(layers.dot_product_attention, s, s, s, platform="cpu")


def test_cuda_without_cudnn_in_this_process_lowers_to_xla():
    s = _spec((2, 256, 4, 32), jnp.bfloat16)
    assert not custom_calls(layers.dot_product_attention, s, s, s, platform="cuda")


def _qkv(shape=(2, 256, 2, 32), dtype=jnp.float32):
    return jax.random.normal(jax.random.key(0), (3, *shape), dtype)


def test_pallas_flash_kernel_matches_reference_in_interpret_mode():
    q, k, v = _qkv()
    w = jax.random.normal(jax.random.key(1), q.shape)
    loss = lambda att: lambda q, k, v: (att(q, k, v) * w).sum()  # noqa: E731
    flash = lambda q, k, v: attention_kernels.tpu_flash_attention(q, k, v, partitioned=False)  # noqa: E731
    with pltpu.force_tpu_interpret_mode():
        out = jax.jit(flash)(q, k, v)
        grads = jax.jit(jax.grad(loss(flash), (0, 1, 2)))(q, k, v)
        batched = jax.jit(jax.vmap(flash))(q[None], k[None], v[None])[0]
    # reference: softmax(q k^T / sqrt(d)) v in float64 numpy
    s = np.einsum("bnhd,bmhd->bhnm", *(np.asarray(a, np.float64) for a in (q, k))) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum("bhnm,bmhd->bnhd", p / p.sum(-1, keepdims=True), np.asarray(v, np.float64))
    np.testing.assert_allclose(out, ref, atol=2e-6)
    np.testing.assert_allclose(batched, ref, atol=2e-6)
    ref_grads = jax.grad(loss(layers.xla_attention), (0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-5)


def test_cpu_form_is_unchanged_bitwise():
    """On the CPU `dot_product_attention` is the hand-written heads-major form (`_attention`) as before the
    per-backend choice: the same bits, forward and gradients, eager and jitted."""
    q, k, v = _qkv((2, 256, 4, 16))
    heads_major = lambda a: a.swapaxes(1, 2)  # noqa: E731
    before = lambda q, k, v: heads_major(layers._attention(*map(heads_major, (q, k, v))))  # noqa: E731
    loss = lambda att: lambda q, k, v: (att(q, k, v) ** 2).sum()  # noqa: E731
    ours = jax.jit(jax.value_and_grad(loss(layers.dot_product_attention), (0, 1, 2)))(q, k, v)
    base = jax.jit(jax.value_and_grad(loss(before), (0, 1, 2)))(q, k, v)
    jax.tree.map(np.testing.assert_array_equal, ours, base)
    np.testing.assert_array_equal(layers.dot_product_attention(q, k, v), before(q, k, v))


def test_kernel_call_is_partitioned_over_batch_and_heads():
    """`per_batch_and_head` (the Pallas calls' wrapper) with an XLA stand-in kernel on 2 CPU devices: a
    batch-sharded and a head-sharded jit run the kernel per shard (no all-gather) with the unsharded result."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jaxdiff.models import attention_kernels, layers
        def stand_in(q, k, v):  # heads-major, results (o, l, m) as the Pallas forward
            o = layers.xla_attention(*(a.swapaxes(1, 2) for a in (q, k, v))).swapaxes(1, 2)
            return o, o.sum(-1), o.max(-1)
        call = attention_kernels.per_batch_and_head(
            stand_in, (4, 4, 4), (4, 3, 3), "b h n d, b h m d, b h m d -> b h n d, b h n, b h n")
        q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 4, 128, 8))
        expected = stand_in(q, k, v)
        mesh = jax.make_mesh((2,), ("x",))
        for spec in (P("x"), P(None, "x")):
            args = [jax.device_put(a, NamedSharding(mesh, spec)) for a in (q, k, v)]
            f = jax.jit(call)
            hlo = f.lower(*args).compile().as_text()
            assert "all-gather" not in hlo, hlo
            for got, want in zip(f(*args), expected):
                np.testing.assert_allclose(got, want, atol=1e-6)
            assert f(*args)[0].sharding.spec[:2] == tuple(spec) + (None,) * (2 - len(spec))
        print("ok")
    """)
    result = run_python(["-c", script], devices=2, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
