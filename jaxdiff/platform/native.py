"""Native CPU kernels that XLA:CPU lacks, called through the XLA FFI (`jax.ffi`), built and loaded on first use.

`jaxdiff/kernels/winograd3x3.cc`: a 3x3, stride-1, padding-1 float32 convolution (NHWC x HWIO) as Winograd
F(2x2, 3x3), which does 16 multiply-adds where a direct convolution does 36 (`jaxdiff.ops.conv` calls it in CPU
lowerings only; the GPU/TPU lowering is XLA's own convolution).

Nothing is built or loaded at import: `vector_width()` builds, loads and registers the kernel at its first call.

The source is compiled once per machine with the host's C++ compiler (`$CXX`, else g++, c++ or clang++) for the
host's vector unit (`-march=native`, else `-mcpu=native`, else the compiler's default) and cached under
`$JAXDIFF_KERNEL_CACHE` (default `~/.cache/jaxdiff/kernels`), keyed by the source, jaxlib's version (the FFI
header it compiles against), the compiler and the CPU's feature flags; the build takes ~5 s. Without a compiler,
or with `JAXDIFF_CPU_KERNELS=0`, or if the build fails (a one-line warning says why), every call uses XLA's
convolution instead: same results to float32 rounding, only slower.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax

SOURCE = Path(__file__).parent.parent / "kernels" / "winograd3x3.cc"
TARGET = "jaxdiff_winograd3x3"  # the FFI target name the CPU lowering calls
ENV_SWITCH = "JAXDIFF_CPU_KERNELS"
ARCH_FLAGS = (["-march=native"], ["-mcpu=native"], [])
_OFF = []  # nesting of `disabled()`


def enabled() -> bool:
    """False when the user turned the native kernels off with JAXDIFF_CPU_KERNELS=0, or inside `disabled()`."""
    return not _OFF and os.environ.get(ENV_SWITCH, "1") != "0"


@contextlib.contextmanager
def disabled():
    """Trace with XLA's convolutions only, e.g. for XLA's cost analysis (it counts no FLOPs in a custom call)."""
    _OFF.append(True)
    try:
        yield
    finally:
        _OFF.pop()


def _cpu_flags() -> str:
    """The CPU's feature flags (x86 'flags' / Arm 'Features' in /proc/cpuinfo), or the processor name."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("flags", "Features"):
                return line
    return platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("JAXDIFF_KERNEL_CACHE") or Path.home() / ".cache" / "jaxdiff" / "kernels")


def _build(cxx: str, arch_options=ARCH_FLAGS) -> Path:
    """Compile SOURCE into the cache with the first of `arch_options` the compiler accepts (atomically: concurrent
    test workers may build at once); returns the .so."""
    import jaxlib

    src = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, jaxlib.__version__.encode(), cxx.encode(), platform.machine().encode(),
                                     _cpu_flags().encode(), repr(arch_options).encode()])).hexdigest()[:16]
    out = cache_dir() / f"winograd3x3-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for arch in arch_options:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        cmd = [cxx, "-O3", "-std=c++17", "-fPIC", "-shared", *arch, f"-I{jax.ffi.include_dir()}", str(SOURCE),
               "-o", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            os.replace(tmp, out)
            return out
        os.unlink(tmp)
        errors.append((proc.stderr.strip().splitlines() or ["?"])[-1])
    raise RuntimeError(f"{cxx} could not compile {SOURCE.name}: {errors[-1]}")


def vector_width() -> int:
    """Floats per vector of the native kernel (16 with AVX-512, else 8), its FFI target registered; 0 if it is
    switched off or unavailable (see the module docstring)."""
    return _registered_width() if enabled() else 0


@functools.cache
def _registered_width() -> int:
    """Build (or find in the cache), load and register the kernel, once per process (XLA refuses a second handler
    for the same target); 0, with a one-line warning, when that is not possible."""
    cxx = _compiler()
    if cxx is None:
        warnings.warn("jaxdiff: no C++ compiler found ($CXX, g++, c++, clang++): XLA's convolution is used on the CPU",
                      stacklevel=3)
        return 0
    try:
        lib = ctypes.cdll.LoadLibrary(str(_build(cxx)))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.Winograd3x3), platform="cpu")
        return int(lib.jaxdiff_vector_width())
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f"jaxdiff: native CPU kernel unavailable ({e}); XLA's convolution is used on the CPU",
                      stacklevel=3)
        return 0
