"""jaxdiff.ops: every tuned op equals its plain reference in values and gradients, and the choice between them is made
when the program is lowered (`lax.platform_dependent`): the CPU lowering holds the tuned form, the CUDA and TPU
lowerings (`jax.export`, no device needed) the reference, with no CPU custom call and no XLA:CPU work-around."""
from __future__ import annotations

import functools
import re
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from jaxdiff import ops
from jaxdiff.ops import attention, conv, linear_attention, norms, products, upsample
from jaxdiff.platform import native

BARRIER = "stablehlo.optimization_barrier"


def _normal(i, shape, scale=1.0):
    return jax.random.normal(jax.random.key(i), shape, jnp.float32) * scale


def _gn(act):
    return (lambda x, a, b: norms.tuned_group_norm_act(x, a, b, 4, 1e-5, act),
            lambda x, a, b: norms.reference_group_norm_act(x, a, b, 4, 1e-5, act),
            lambda x, a, b: ops.group_norm_act(x, a, b, 4, 1e-5, act))


def _ln(tuned_or_ref):
    return lambda x, s, b: tuned_or_ref(x, s, b, 1e-5)


# name -> (tuned, reference, public op, arguments, how the tuned form shows in a lowered module of the op's gradient)
CASES = {
    "group_norm_silu": (*_gn(nn.silu), (_normal(0, (2, 6, 5, 8), 2.0) + 1, 1 + _normal(1, (2, 8), .1),
                                       _normal(2, (2, 8), .1)), BARRIER),
    "group_norm_gelu_3d": (*_gn(functools.partial(nn.gelu, approximate=False)),
                           (_normal(3, (2, 3, 4, 5, 8)), 1 + _normal(4, (2, 8), .1), _normal(5, (2, 8), .1)), BARRIER),
    "group_norm_plain_1d": (*_gn(None), (_normal(6, (3, 7, 8)), 1 + _normal(7, (3, 8), .1), _normal(8, (3, 8), .1)),
                            BARRIER),
    "layer_norm": (_ln(norms.tuned_layer_norm), _ln(norms.reference_layer_norm), _ln(ops.layer_norm),
                   (_normal(9, (2, 5, 16), 3.0) + 2, 1 + _normal(10, (16,), .1), _normal(11, (16,), .1)), BARRIER),
    "layer_norm_no_bias": (lambda x, s: norms.tuned_layer_norm(x, s, None, 1e-5),
                           lambda x, s: norms.reference_layer_norm(x, s, None, 1e-5),
                           lambda x, s: ops.layer_norm(x, s, None, 1e-5),
                           (_normal(12, (4, 16)), 1 + _normal(13, (16,), .1)), BARRIER),
    "tn_matmul_b_smaller": (products.tuned_tn_matmul, products.reference_tn_matmul, ops.tn_matmul,
                            (_normal(14, (2, 24, 20)), _normal(15, (2, 24, 4))), BARRIER),
    "tn_matmul_a_smaller": (products.tuned_tn_matmul, products.reference_tn_matmul, ops.tn_matmul,
                            (_normal(16, (24, 4)), _normal(17, (24, 20))), BARRIER),
    "matmul": (products.tuned_matmul, products.reference_matmul, ops.matmul,
               (_normal(18, (2, 12, 32)), _normal(19, (32, 4))), BARRIER),
    "attention": (attention.xla_attention, attention.reference_attention, ops.dot_product_attention,
                  tuple(_normal(20 + i, (2, 10, 2, 8)) for i in range(3)), BARRIER),
    "linear_attention_context": (linear_attention.tuned_linear_attention_context,
                                 linear_attention.reference_linear_attention_context, ops.linear_attention_context,
                                 (jax.nn.softmax(_normal(23, (2, 12, 2, 8)), axis=1), _normal(24, (2, 12, 6)),
                                  _normal(25, (6, 16), .3)), BARRIER),
    "linear_attention_output": (linear_attention.tuned_linear_attention_output,
                                linear_attention.reference_linear_attention_output, ops.linear_attention_output,
                                (jax.nn.softmax(_normal(26, (2, 12, 2, 8)), axis=-1), _normal(27, (2, 2, 8, 8)),
                                 _normal(28, (16, 6), .3)), BARRIER),
    "upsample_conv_2d": (upsample.tuned_upsample_conv, upsample.reference_upsample_conv, ops.upsample_conv,
                         (_normal(29, (2, 3, 4, 5)), _normal(30, (3, 3, 5, 6), .2), _normal(31, (6,))),
                         "4 convolutions"),
    "upsample_conv_3d": (upsample.tuned_upsample_conv, upsample.reference_upsample_conv, ops.upsample_conv,
                         (_normal(32, (1, 2, 3, 2, 3)), _normal(33, (3, 3, 3, 3, 4), .2), _normal(34, (4,))),
                         "8 convolutions"),
    "patch_conv_transpose": (upsample.tuned_patch_conv_transpose, upsample.reference_patch_conv_transpose,
                             ops.patch_conv_transpose,
                             (_normal(35, (2, 3, 4, 5)), _normal(36, (2, 2, 5, 6), .3), _normal(37, (6,))),
                             "no convolution"),
}


def _loss(fn, weight_key=99):
    """A scalar of fn's output with a cotangent that is not all ones (so no gradient term cancels)."""
    def loss(*args):
        y = fn(*args).astype(jnp.float32)
        return jnp.sum(jnp.sin(y) * jax.random.normal(jax.random.key(weight_key), y.shape))
    return loss


def _grad(fn, args):
    return jax.grad(_loss(fn), tuple(range(len(args))))


def _lowered(fn, args, platform: str) -> str:
    """fn's StableHLO module lowered for `platform` (this host's own lowering for the CPU: `jax.export` refuses the
    native kernel's FFI call, which has no compatibility guarantee)."""
    if platform == "cpu":
        return jax.jit(fn).lower(*args).as_text()
    return jax.export.export(jax.jit(fn), platforms=(platform,))(*args).mlir_module()


def _shows_tuned(marker: str, text: str) -> bool:
    convs = text.count("stablehlo.convolution")
    if marker == "no convolution":
        return convs == 0
    if marker.endswith("convolutions"):  # the forward's per-phase convolutions (the reference has one)
        return convs >= int(marker.split()[0])
    return marker in text


@pytest.mark.parametrize("name", CASES)
def test_tuned_equals_reference_in_values_and_gradients(name):
    tuned, reference, _, args, _ = CASES[name]
    np.testing.assert_allclose(jax.jit(tuned)(*args), jax.jit(reference)(*args), rtol=2e-5, atol=2e-5)
    for got, want in zip(jax.jit(_grad(tuned, args))(*args), jax.jit(_grad(reference, args))(*args)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(jnp.abs(want).max()))


# The cases whose tuned form is observable in the lowered gradient (a^T b with the smaller a is the direct product).
LOWERED = [name for name in CASES if name not in ("tn_matmul_a_smaller", "group_norm_plain_1d", "layer_norm_no_bias")]


@pytest.mark.parametrize("name", LOWERED)
def test_cpu_lowers_the_tuned_form_cuda_and_tpu_the_reference(name):
    tuned, reference, op, args, marker = CASES[name]
    grad = _grad(op, args)
    assert _shows_tuned(marker, _lowered(grad, args, "cpu"))
    for platform in ("cuda", "tpu"):
        text = _lowered(grad, args, platform)
        assert not _shows_tuned(marker, text), platform
        assert "custom_call" not in text, platform
    # and on the CPU the public op computes the tuned form's numbers
    np.testing.assert_array_equal(jax.jit(op)(*args), jax.jit(tuned)(*args))


def test_bf16_group_norm_matches_reference():
    x, a, b = (v.astype(jnp.bfloat16) for v in CASES["group_norm_silu"][3])
    tuned, reference = CASES["group_norm_silu"][:2]
    assert tuned(x, a, b).dtype == reference(x, a, b).dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(tuned(x, a, b), np.float32), np.asarray(reference(x, a, b), np.float32),
                               rtol=2e-2, atol=2e-2)


needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler on this machine")
NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w):
    return ops.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


@needs_compiler
def test_winograd_convolution_equals_reference_and_lowers_by_platform():
    x, w = _normal(40, (2, 6, 8, 16)), _normal(41, (3, 3, 16, 16), 1 / 12)
    assert conv.native_eligible(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
    np.testing.assert_allclose(jax.jit(conv.conv3x3)(x, w), conv.reference_conv3x3(x, w), rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.jit(_grad(conv.conv3x3, (x, w)))(x, w), _grad(conv.reference_conv3x3, (x, w))(x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
    grad = _grad(_conv, (x, w))
    assert f"custom_call @{native.TARGET}" in _lowered(grad, (x, w), "cpu")
    for platform in ("cuda", "tpu"):
        text = _lowered(grad, (x, w), platform)
        assert "custom_call" not in text and "stablehlo.convolution" in text, platform


@needs_compiler
def test_tuned_forms_do_not_depend_on_the_tracing_hosts_backend(monkeypatch):
    """A program traced where the default backend is a GPU lowers for the CPU to the tuned forms (native Winograd
    convolution, the norm's barriers): the choice is made at lowering, not from `jax.default_backend()`."""
    x, w = _normal(42, (2, 6, 8, 16)), _normal(43, (3, 3, 16, 16), 1 / 12)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    fn = lambda x, w: ops.group_norm_act(_conv(x, w), jnp.ones((2, 16)), jnp.zeros((2, 16)), 4, 1e-5, nn.silu)  # noqa: E731
    text = _lowered(fn, (x, w), "cpu")
    assert f"custom_call @{native.TARGET}" in text and BARRIER in text
    assert "custom_call" not in _lowered(fn, (x, w), "cuda")


def test_importing_ops_and_models_builds_and_starts_nothing(tmp_path):
    script = textwrap.dedent("""
        import subprocess
        def refuse(*a, **k):
            raise AssertionError(f"a process was started at import: {a}")
        subprocess.Popen = subprocess.run = refuse
        import jaxdiff.ops, jaxdiff.kernels, jaxdiff.kernels.conv, jaxdiff.models.attention_kernels
        from jaxdiff import models
        models._load_all()
        from jaxdiff.platform import native
        assert native._registered_width.cache_info().currsize == 0
        print("ok")
    """)
    proc = run_python(["-c", script], env_extra={"JAXDIFF_KERNEL_CACHE": str(tmp_path)})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    assert not list(tmp_path.iterdir())  # nothing built


def test_no_trace_time_backend_choice_in_ops_or_models():
    """The ops and the models choose by lowering only: none of their modules asks for the default backend."""
    import jaxdiff
    from pathlib import Path
    root = Path(jaxdiff.__file__).parent
    offenders = [str(p.relative_to(root)) for sub in ("ops", "models", "kernels") for p in (root / sub).rglob("*.py")
                 if re.search(r"default_backend\(", p.read_text())]
    assert not offenders, offenders
