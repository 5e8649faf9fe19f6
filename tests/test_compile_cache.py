"""The persistent compilation cache that `jaxdiff.platform.enable_compilation_cache` turns on: where it lives, how to
turn it off, that importing jaxdiff leaves it off, and that a fresh process loads the programs an earlier one compiled
(a program calling the native Winograd kernel's FFI target included) and computes the same numbers with them.

Each check runs in fresh processes with the cache in a temporary folder (`JAXDIFF_COMPILATION_CACHE=<path>`)."""
from __future__ import annotations

import json
import os

import pytest

from conftest import run_python

# A jitted forward and gradient of a 3x3 convolution with 16 input and output channels (a multiple of the native
# kernel's vector width, 8 or 16: on a CPU with a C++ compiler it calls the FFI target), after
# `enable_compilation_cache()`; prints the cache folder, whether the program calls the native kernel, the cache
# events counted by jax.monitoring and the outputs.
PROGRAM = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jaxdiff import kernels, platform
from jaxdiff.kernels.conv import conv_general_dilated

folder = platform.enable_compilation_cache()
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))

def loss(w, x):
    y = conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean(jnp.tanh(y) ** 2)

rng = np.random.default_rng(0)
x = rng.normal(size=(2, 8, 8, 16)).astype(np.float32)
w = rng.normal(size=(3, 3, 16, 16)).astype(np.float32) * 0.1
f = jax.jit(jax.value_and_grad(loss))
native = kernels.TARGET in f.lower(w, x).as_text()
value, grad = f(w, x)
print(json.dumps({"folder": folder, "native": native, "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses"),
                  "value": float(value), "grad": np.asarray(grad).ravel()[::37].tolist()}))
"""


def _run(args, env) -> dict:
    proc = run_python(args, env_extra=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _entries(folder) -> set[str]:
    return {n for n in os.listdir(folder) if n.endswith("-cache")}


def _loads_here(folder) -> None:
    """Skip where this backend rejects its own cached programs (the cache then stays off by design)."""
    markers = [n for n in os.listdir(folder) if n.startswith("jaxdiff-load-check-")]
    assert len(markers) == 1, os.listdir(folder)
    status = open(os.path.join(folder, markers[0])).read().strip()
    if status != "ok":
        pytest.skip(f"the backend rejects its own cached programs here ({status}): the cache stays off")


def test_import_changes_nothing_and_the_folder_follows_the_environment(tmp_path, monkeypatch):
    """`import jaxdiff` leaves the environment (the tests turn jaxdiff's XLA_FLAGS defaults off) and JAX's cache
    options as they were; the default folder is under
    XDG_CACHE_HOME (else ~/.cache), a path in JAXDIFF_COMPILATION_CACHE replaces it, 0 turns the cache off; the
    folder has one subfolder per machine type."""
    script = ("import os, json, jax; before = dict(os.environ); import jaxdiff; "
              "print(json.dumps([dict(os.environ) == before, jax.config.jax_compilation_cache_dir]))")
    proc = _run(["-c", script], {"JAXDIFF_COMPILATION_CACHE": str(tmp_path / "unused")})
    assert json.loads(proc.stdout) == [True, None]
    assert not (tmp_path / "unused").exists()

    from jaxdiff import platform as jaxdiff
    monkeypatch.delenv("JAXDIFF_COMPILATION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = jaxdiff.compilation_cache_dir()
    assert os.path.dirname(folder) == str(tmp_path / "xdg" / "jaxdiff" / "xla")
    tag = os.path.basename(folder)
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert jaxdiff.compilation_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "jaxdiff", "xla", tag)
    monkeypatch.setenv("JAXDIFF_COMPILATION_CACHE", str(tmp_path / "mine"))
    assert jaxdiff.compilation_cache_dir() == str(tmp_path / "mine" / tag)
    for off in ("0", "off", "false"):
        monkeypatch.setenv("JAXDIFF_COMPILATION_CACHE", off)
        assert jaxdiff.compilation_cache_dir() is None


def test_a_fresh_process_loads_the_cached_programs_native_kernel_included(tmp_path):
    """Two fresh processes run the same program (its convolutions on the native kernel's FFI target where the
    kernel builds): the first compiles and writes the cache, the second only loads (cache hits, no new entry) and
    gives bitwise the same loss and gradients; with JAXDIFF_COMPILATION_CACHE=0 nothing is cached."""
    env = {"JAXDIFF_COMPILATION_CACHE": str(tmp_path / "xla")}
    first = json.loads(_run(["-c", PROGRAM], env).stdout.splitlines()[-1])
    folder = first["folder"]
    assert folder.startswith(str(tmp_path / "xla")) and first["misses"] > 0
    from jaxdiff import kernels
    assert first["native"] or not kernels._compiler(), "the convolution should call the native kernel"
    _loads_here(folder)
    written = _entries(folder)
    assert written
    second = json.loads(_run(["-c", PROGRAM], env).stdout.splitlines()[-1])
    assert second["folder"] == folder and second["native"] == first["native"]
    assert second["hits"] > 0 and second["misses"] == 0, second
    assert _entries(folder) == written
    assert (second["value"], second["grad"]) == (first["value"], first["grad"])
    off = json.loads(_run(["-c", PROGRAM], {"JAXDIFF_COMPILATION_CACHE": "0"}).stdout.splitlines()[-1])
    assert off["folder"] is None and off["hits"] == off["misses"] == 0
    assert (off["value"], off["grad"]) == (first["value"], first["grad"])


def test_a_backend_that_rejects_its_cached_programs_leaves_the_cache_off_silently(tmp_path):
    """Where loading a cached program fails (XLA:CPU on some CPUs), the load check turns the cache off without a
    word on stderr and remembers it: a later process does not try again. The failure is simulated by making
    every cached program unreadable to the backend."""
    script = ("import jax\nfrom jaxdiff import platform as jaxdiff\n"
              "from jax._src import compilation_cache as cc\n"
              "def reject(*a, **k):\n"
              "    raise RuntimeError('Target machine feature +prefer-no-gather is not supported on the host machine')\n"
              "cc.get_executable_and_time = reject\n"
              "print(jaxdiff.enable_compilation_cache(), jax.config.jax_compilation_cache_dir)\n"
              "print(float(jax.jit(lambda x: x * 2)(1.0)))\n")
    env = {"JAXDIFF_COMPILATION_CACHE": str(tmp_path / "xla")}
    proc = _run(["-c", script], env)
    assert proc.stdout.split() == ["None", "None", "2.0"]
    assert proc.stderr.strip() == ""
    (folder,) = [tmp_path / "xla" / n for n in os.listdir(tmp_path / "xla")]
    (marker,) = [n for n in os.listdir(folder) if n.startswith("jaxdiff-load-check-")]
    assert (folder / marker).read_text().startswith("rejected")
    proc = _run(["-c", "from jaxdiff import platform; print(platform.enable_compilation_cache())"], env)
    assert proc.stdout.split() == ["None"]
