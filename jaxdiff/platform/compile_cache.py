"""JAX's persistent compilation cache, in a folder per machine type under the user's cache directory.

`enable_compilation_cache()` (called by `jaxdiff.platform.setup`) turns it on, so a resumed run, `sample` and
`evaluate` load the programs an earlier run compiled instead of compiling them again. `JAXDIFF_COMPILATION_CACHE=0`
turns it off, a path moves it.
"""
from __future__ import annotations

import os
import platform
import sys

COMPILATION_CACHE_ENV = "JAXDIFF_COMPILATION_CACHE"
CACHE_MIN_COMPILE_TIME_S = 0.0           # cache every program: a model's many small ones add up at start-up
CACHE_MAX_BYTES = 4 << 30                # least recently used entries are evicted past this (needs filelock)
_CACHE_WARNINGS = r"Error (reading|writing) persistent compilation cache entry"
_COMPILATION_CACHE = None                # enable_compilation_cache's answer in this process (once per process)


def compilation_cache_dir() -> str | None:
    """The folder `enable_compilation_cache` uses, or None when `JAXDIFF_COMPILATION_CACHE` is 0 / off / false.

    `$JAXDIFF_COMPILATION_CACHE` (a path) or by default `$XDG_CACHE_HOME/jaxdiff/xla` (`~/.cache/jaxdiff/xla`), and in
    it one subfolder per machine type (architecture and CPU feature flags): XLA:CPU programs are built for the host's
    vector unit, so a cache folder shared by several machines (a home directory on NFS) keeps their programs apart."""
    setting = os.environ.get(COMPILATION_CACHE_ENV, "").strip()
    if setting.lower() in ("0", "off", "false", "no"):
        return None
    if setting and setting.lower() not in ("1", "on", "true", "yes"):
        base = os.path.abspath(os.path.expanduser(setting))
    else:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "jaxdiff", "xla")
    return os.path.join(base, _machine_tag())


def _machine_tag() -> str:
    """`<architecture>-<hash of the CPU's feature flags>`, e.g. x86_64-3f9a0c1d2b4e."""
    import hashlib
    flags = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.split(":")[0].strip() in ("flags", "Features")), flags)
    except OSError:
        pass
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache in `compilation_cache_dir()`; returns the folder in use, or None.

    Every program is cached (`jax_persistent_cache_min_compile_time_secs` = `CACHE_MIN_COMPILE_TIME_S`), the folder
    is kept under `CACHE_MAX_BYTES` when `filelock` is installed, and an entry that cannot be read or written is
    compiled again without a word (JAX's warning for it is filtered). Once per cache folder and jaxlib version a tiny
    program is compiled, cached and loaded back: where the backend rejects its own cached programs (XLA:CPU on some
    CPUs, jax-ml/jax#38445) the cache stays off, silently, and a marker file remembers the answer. A cache folder
    the user chose for JAX (`JAX_COMPILATION_CACHE_DIR` or `jax.config`) is left as it is and returned. Sets
    options with `jax.config.update` only (no environment variables); call it before the first compilation that
    should be cached, after `set_cpu_fusion` / `set_cpu_devices` (the load check starts JAX's backends)."""
    global _COMPILATION_CACHE
    if _COMPILATION_CACHE is not None:
        return _COMPILATION_CACHE or None
    import warnings
    import jax
    warnings.filterwarnings("ignore", message=_CACHE_WARNINGS)
    if jax.config.jax_compilation_cache_dir:
        _COMPILATION_CACHE = str(jax.config.jax_compilation_cache_dir)
        return _COMPILATION_CACHE
    path = compilation_cache_dir()
    _COMPILATION_CACHE = path if path and _cache_loads_here(path) else ""
    return _COMPILATION_CACHE or None


def _use_cache_dir(path: str | None) -> None:
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    if path is None:
        from jax.experimental.compilation_cache import compilation_cache
        compilation_cache.reset_cache()
        return
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_TIME_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)    # no size threshold (-1: none, kept)
    try:
        import filelock  # noqa: F401  (JAX's eviction locks the folder with it)
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    except ImportError:
        pass


def _cache_loads_here(path: str) -> bool:
    """Point JAX's cache at `path` and check (once per folder and jaxlib version, remembered in a marker file) that
    a program it caches loads back in this process; on failure the cache is switched off again. False also when
    the folder cannot be created."""
    import jaxlib
    marker = os.path.join(path, f"jaxdiff-load-check-{jaxlib.__version__}")
    try:
        with open(marker) as f:
            ok = f.read().strip() == "ok"
    except OSError:
        ok = None
    if ok is False:
        return False
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    _use_cache_dir(path)
    if ok:
        return True
    ok = _load_check()
    if not ok:
        _use_cache_dir(None)
    try:
        tmp = f"{marker}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write("ok\n" if ok else "rejected: this backend cannot load the programs it caches\n")
        os.replace(tmp, marker)
    except OSError:
        pass
    return ok


def _load_check() -> bool:
    """Compile a tiny program twice through the persistent cache: True when the second compile loads the first's
    cached program. The loader's own error lines (XLA logs them to stderr) are kept off the terminal."""
    import jax
    import numpy as np
    events = []

    def listen(event, **kwargs):
        events.append(event)

    x = np.arange(7, dtype=np.float32)

    def run():  # a fresh lowering each time: JAX keeps no compiled program for it in memory
        return np.asarray(jax.jit(lambda v: jax.numpy.cumsum(v * 3.0 + 1.0)).lower(x).compile()(x))

    jax.monitoring.register_event_listener(listen)
    try:
        with _stderr_silenced():
            first = run()
            events.clear()
            second = run()                      # loaded from the persistent cache, where it works
    except Exception:                           # noqa: BLE001  (any failure: leave the cache off)
        return False
    finally:
        jax.monitoring.unregister_event_listener(listen)
    return "/jax/compilation_cache/cache_hits" in events and np.array_equal(first, second)


class _stderr_silenced:
    """Send file descriptor 2 to /dev/null inside the block (C++ log lines that `warnings` cannot filter)."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
