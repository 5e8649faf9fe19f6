"""The native Winograd 3x3 convolution (built by jaxdiff.platform.native, called by jaxdiff.ops.conv; the old
names under jaxdiff.kernels still work): same values and gradients as XLA's convolution, taken only
where eligible, batch-parallel under SPMD, absent from GPU lowerings, and a clean fallback when it cannot be built."""
from __future__ import annotations

import ctypes
import shutil
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import run_python
from jaxdiff.kernels import conv as kconv  # the old module name, forwarded to jaxdiff.ops.conv
from jaxdiff.platform import native as kernels

NHWC = ("NHWC", "HWIO", "NHWC")
needs_compiler = pytest.mark.skipif(kernels._compiler() is None, reason="no C++ compiler on this machine")


def _lax(x, w, stride=(1, 1), padding=((1, 1), (1, 1)), **kw):
    return lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=NHWC, **kw)


def _ours(x, w, stride=(1, 1), padding=((1, 1), (1, 1)), **kw):
    return kconv.conv_general_dilated(x, w, stride, padding, dimension_numbers=NHWC, **kw)


def _arrays(shape, out, dtype=jnp.float32, k=3, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, shape, dtype)
    w = (jax.random.normal(kw, (k, k, shape[-1], out)) / np.sqrt(k * k * shape[-1])).astype(dtype)
    return x, w


def _rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


def _targets(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


@needs_compiler
def test_kernel_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_KERNEL_CACHE", str(tmp_path))
    lib = kernels._build(kernels._compiler())
    assert lib.parent == tmp_path and [p.name for p in tmp_path.iterdir()] == [lib.name]
    stamp = lib.stat().st_mtime_ns
    assert kernels._build(kernels._compiler()) == lib and lib.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert kernels.vector_width() in (8, 16)


@needs_compiler
@pytest.mark.parametrize("shape,out", [((2, 8, 6, 16), 32), ((1, 4, 10, 32), 16), ((3, 2, 2, 48), 48),
                                       ((1, 16, 16, 96), 32)])
def test_values_and_gradients_match_xla(shape, out):  # channels: multiples of 16, so eligible with either width
    x, w = _arrays(shape, out)
    assert kconv.native_eligible(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
    assert kernels.TARGET in _targets(_ours, x, w)
    assert _rel(jax.jit(_ours)(x, w), _lax(x, w)) < 1e-5

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w)) * jnp.arange(out))

    got = jax.jit(jax.grad(loss(_ours), (0, 1)))(x, w)
    want = jax.grad(loss(_lax), (0, 1))(x, w)
    for g, e in zip(got, want):
        assert g.shape == e.shape and _rel(g, e) < 1e-5
    # the input gradient is itself a native conv (the transposed kernel); the kernel gradient is XLA's
    assert _targets(jax.grad(loss(_ours), (0, 1)), x, w).count(kernels.TARGET) == 2


@pytest.mark.parametrize("case", ["odd_height", "channels_not_vector", "stride2", "bf16", "dilated", "kernel5",
                                  "valid", "nchw"])
def test_ineligible_convolutions_fall_back_to_xla(case):
    shape, out, kw, dtype, k = (2, 8, 8, 16), 16, {}, jnp.float32, 3
    if case == "odd_height":
        shape = (2, 7, 8, 16)
    elif case == "channels_not_vector":
        shape, out = (2, 8, 8, 3), 16
    elif case == "stride2":
        kw = dict(stride=(2, 2))
    elif case == "bf16":
        dtype = jnp.bfloat16
    elif case == "dilated":
        kw = dict(rhs_dilation=(2, 2), padding=((2, 2), (2, 2)))
    elif case == "kernel5":
        k, kw = 5, dict(padding=((2, 2), (2, 2)))
    elif case == "valid":
        kw = dict(padding="VALID")
    x, w = _arrays(shape, out, dtype, k)
    if case == "nchw":
        x = x.transpose(0, 3, 1, 2)
        got = kconv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "HWIO", "NCHW"))
        want = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "HWIO", "NCHW"))
        text = _targets(lambda x, w: kconv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                                dimension_numbers=("NCHW", "HWIO", "NCHW")), x, w)
    else:
        got, want, text = _ours(x, w, **kw), _lax(x, w, **kw), _targets(lambda x, w: _ours(x, w, **kw), x, w)
    assert kernels.TARGET not in text
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@needs_compiler
def test_switch_off_and_failed_build_fall_back(tmp_path, monkeypatch):
    x, w = _arrays((1, 4, 4, 16), 16)
    monkeypatch.setenv("JAXDIFF_CPU_KERNELS", "0")
    assert kernels.vector_width() == 0 and kernels.TARGET not in _targets(_ours, x, w)
    np.testing.assert_array_equal(_ours(x, w), _lax(x, w))
    monkeypatch.delenv("JAXDIFF_CPU_KERNELS")
    monkeypatch.setenv("JAXDIFF_KERNEL_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="could not compile winograd3x3.cc"):
        kernels._build(shutil.which("false"))  # a "compiler" that always fails
    assert not list(tmp_path.iterdir())  # no half-written library left behind
    monkeypatch.setattr(kernels, "_compiler", lambda: shutil.which("false"))
    with pytest.warns(UserWarning, match="native CPU kernel unavailable"):
        assert kernels._registered_width.__wrapped__() == 0  # a fresh process's first use, uncached
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C.. compiler found"):
        assert kernels._registered_width.__wrapped__() == 0


@needs_compiler
def test_vmap_folds_the_vmapped_axis_into_the_batch():
    x, w = _arrays((2, 3, 8, 8, 16), 16)
    got = jax.jit(jax.vmap(_ours, (0, None)))(x, w)
    assert _rel(got, jax.vmap(_lax, (0, None))(x, w)) < 1e-5
    ws = jnp.stack([w, -w])  # a vmapped kernel: XLA's convolution
    assert _rel(jax.vmap(_ours)(x, ws), jax.vmap(_lax)(x, ws)) < 1e-5


@needs_compiler
def test_gpu_lowering_is_xla_convolution():
    x, w = _arrays((2, 8, 8, 16), 16)
    text = jax.export.export(jax.jit(_ours), platforms=("cuda",))(x, w).mlir_module()
    assert kernels.TARGET not in text and "stablehlo.convolution" in text


@needs_compiler
def test_batch_sharded_call_runs_per_device():
    """Under a batch-sharded jit on 2 devices each device convolves its own images: no all-gather of the input."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jax import lax
        from jax.sharding import NamedSharding, PartitionSpec as P
        from jaxdiff.kernels import conv as kconv
        mesh = jax.make_mesh((2,), ("b",))
        x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
        w = jax.random.normal(jax.random.key(1), (3, 3, 16, 16)) * 0.1
        xs = jax.device_put(x, NamedSharding(mesh, P("b")))
        f = jax.jit(lambda x, w: kconv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                            dimension_numbers=("NHWC", "HWIO", "NHWC")),
                    out_shardings=NamedSharding(mesh, P("b")))
        text = f.lower(xs, w).compile().as_text()
        calls = [l for l in text.splitlines() if "jaxdiff_winograd3x3" in l and "custom-call(" in l]
        assert calls and all("f32[2,8,8,16]" in l.split("=")[1] for l in calls), calls
        assert "all-gather" not in text
        want = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        assert float(jnp.abs(f(xs, w) - want).max()) < 1e-5
        print("ok")
    """)
    proc = run_python(["-c", script], devices=2)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@needs_compiler
@pytest.mark.parametrize("arch", [("-mavx2", "-mfma"), ()], ids=["avx2", "generic"])
def test_other_instruction_sets_give_the_same_convolution(arch, tmp_path, monkeypatch):
    """The AVX2 build (what an AVX2-only CPU gets from -march=native) and the portable one (GCC vector extensions,
    as on Arm), built here under their own FFI target names and called directly."""
    if arch and "avx2" not in kernels._cpu_flags().split():
        pytest.skip("-mavx2 code cannot run on this CPU (no AVX2: not x86, or an older one)")
    monkeypatch.setenv("JAXDIFF_KERNEL_CACHE", str(tmp_path))
    lib = ctypes.cdll.LoadLibrary(str(kernels._build(kernels._compiler(), [list(arch)])))
    assert lib.jaxdiff_vector_width() == 8
    target = f"jaxdiff_winograd3x3_test_{'_'.join(a.strip('-') for a in arch) or 'generic'}"
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(lib.Winograd3x3), platform="cpu")
    for shape, out in [((2, 6, 10, 8), 24), ((1, 16, 16, 40), 8)]:  # odd numbers of 8-float vectors too
        x, w = _arrays(shape, out)
        call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((*shape[:-1], out), jnp.float32))
        assert _rel(jax.jit(call)(x, kconv.winograd_weights(w)), _lax(x, w)) < 1e-5
