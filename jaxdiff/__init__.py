"""jaxdiff: medical-imaging diffusion and segmentation models in JAX/Flax.

Layout (see README): `models` (Flax modules), `diffusion` (schedules, losses, samplers), `tasks` (loss and
prediction per task), `training` (the shared sharded step, loop, checkpoints), `data` (grain pipelines),
`metrics`, `io`, `viz`. Command-line entry points: `python -m jaxdiff.{train,sample,evaluate,summary}`.

XLA:CPU defaults: importing jaxdiff before JAX creates its CPU backend adds `CPU_XLA_FLAGS` to `XLA_FLAGS`
(unless the flag is already set there, or `JAXDIFF_XLA_CPU_DEFAULTS=0`). They route XLA:CPU's dots,
convolutions, elementwise and reduction fusions through YNNPACK, which uses every core (XLA's own convolution
runs on one); measured on the 2-core CPU: the quickstart train step 876 -> 678 ms, same outputs (parity tests).
`xla_cpu_*` flags are read by the CPU backend only: GPU and TPU compilation is unchanged. A config may choose other
fusion types with its top-level key `xla_cpu_fusion` (e.g. "dot,reduce": narrow models whose elementwise work
runs on 1-16 channels are faster without YNNPACK's elementwise fusions); the entry points apply it with
`set_cpu_fusion` before JAX starts.

The command-line entry points (`train`, `sample`, `evaluate`) also call `reexec_with_malloc_defaults()`: XLA
allocates each step's temporary buffer (hundreds of MB for a UNet step) with malloc, which glibc serves with a fresh
mmap per call, so every step page-faults its whole working set in 4 KiB pages. `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
makes glibc ask for transparent huge pages instead (measured on the 2-core CPU: ~100k -> ~600 page faults per
quickstart train step); an environment variable read at process start, so the process re-runs itself once with it.
`python -m jaxdiff.sample` also gives the CPU backend one device per core (`set_cpu_devices`) and splits the batch
over them.

Compiled programs are kept between runs: `training.loop.train` and `training.checkpoint.load_for_inference` call
`enable_compilation_cache()`, which turns on JAX's persistent compilation cache in a folder under the user's cache
directory (`JAXDIFF_COMPILATION_CACHE=0` turns it off, a path moves it), so a resumed run, `sample` and `evaluate`
load the programs an earlier run compiled instead of compiling them again. Importing jaxdiff does not turn it on.
"""
import os
import platform
import sys

__version__ = "0.1.0"

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_FUSION_TYPES = ("dot", "eltwise", "reduce", "individual_dot", "individual_convolution")  # XLA's LibraryFusionType
CPU_XLA_FLAGS = (f"{YNN_FUSION_FLAG}=dot,eltwise,reduce",)
_ADDED_ENV = "JAXDIFF_ADDED_XLA_FLAGS"  # the flags in XLA_FLAGS that jaxdiff added (seen by child processes)


def _user_xla_flags() -> str:
    """XLA_FLAGS without the flags jaxdiff added to it (in this process or the parent it inherited them from)."""
    added = set(os.environ.get(_ADDED_ENV, "").split())
    return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f not in added)


_USER_XLA_FLAGS = _user_xla_flags()


def _set_added_flags(remove: str | None, add: list[str]) -> None:
    """Put `add` into XLA_FLAGS (dropping flags named `remove`) and record them as added by jaxdiff."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if remove is None or f.split("=")[0] != remove]
    added = [f for f in os.environ.get(_ADDED_ENV, "").split() if remove is None or f.split("=")[0] != remove]
    os.environ["XLA_FLAGS"] = " ".join(kept + [f for f in add if f not in kept])
    os.environ[_ADDED_ENV] = " ".join(added + [f for f in add if f not in added])


def _add_cpu_xla_flags() -> None:
    if os.environ.get("JAXDIFF_XLA_CPU_DEFAULTS", "1") == "0":
        return
    missing = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]
    if missing:
        _set_added_flags(None, missing)


_add_cpu_xla_flags()


def set_cpu_fusion(types: str | None) -> bool:
    """Route these XLA:CPU fusion types ("dot,reduce", ...) through YNNPACK instead of `CPU_XLA_FLAGS`' choice.

    For a config's `xla_cpu_fusion` key; call it before JAX creates its CPU backend (the flag is read then).
    Raises InputError naming the key for a type outside `YNN_FUSION_TYPES`.
    No-op (returns False) when `types` is empty, when the user's XLA_FLAGS sets the flag (the user wins) or with
    `JAXDIFF_XLA_CPU_DEFAULTS=0`, and with a warning when JAX's backends already exist (the flag would be ignored:
    a notebook that ran JAX first keeps the defaults)."""
    unknown = [t for t in (types or "").split(",") if t not in YNN_FUSION_TYPES]
    if types and unknown:  # XLA would abort at startup with its whole flag list
        from jaxdiff.errors import InputError
        raise InputError(f"config key xla_cpu_fusion: unknown fusion type {unknown[0]!r} in {types!r} "
                         f"(comma-separated, of {', '.join(YNN_FUSION_TYPES)})")
    if (not types or os.environ.get("JAXDIFF_XLA_CPU_DEFAULTS", "1") == "0"
            or YNN_FUSION_FLAG in _USER_XLA_FLAGS):
        return False
    flag = f"{YNN_FUSION_FLAG}={types}"
    if flag in os.environ.get("XLA_FLAGS", "").split():
        return True
    if _backends_started(f"xla_cpu_fusion={types!r}"):
        return False
    _set_added_flags(YNN_FUSION_FLAG, [flag])
    return True


def _backends_started(what: str) -> bool:
    """True (with a warning that `what` is not applied) when JAX's backends already exist in this process."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
        return False
    import warnings
    warnings.warn(f"{what} not applied: JAX's backends already exist in this process", stacklevel=3)
    return True


CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"
_SAMPLING_CPU_DEVICES = 0  # the CPU device count `set_cpu_devices` set in this process (0: none)


def set_cpu_devices(n: int | None = None) -> int:
    """Give JAX's CPU backend `n` devices (0: one per core this process may run on; None: that default unless
    `JAXDIFF_XLA_CPU_DEFAULTS=0`), for data-parallel sampling (`DiffusionTask.jitted_sample` splits the batch over
    the devices). Call it before JAX creates its backends (the entry point `jaxdiff.sample` does); the CPU backend
    only, GPU and TPU devices are unchanged. Returns the count set, or 0 when nothing was changed: `n` of 1, the
    user's XLA_FLAGS or JAX_NUM_CPU_DEVICES already choose, or the backends exist (with a warning).

    Why: XLA:CPU runs each operation over all cores, and a UNet's convolutions at a few samples do not keep two
    cores busy; one device per core, each running the chain on its share of the batch, sampled the quickstart UNet
    ~1.1x and MedSegDiff-tiny ~1.2x faster on the 2-core CPU (README, "Side by side with PyTorch"). Training keeps
    one device per process (a 2-device data-parallel train step was slower there): `training.sharding.make_mesh`
    puts the train step on the first CPU device when the others are only this function's (`sampling_cpu_devices`).
    """
    from jaxdiff.errors import InputError
    if n is not None and n < 0:
        raise InputError(f"--cpu_devices: {n} is negative (0: one per core, 1: a single device)")
    if n is None and os.environ.get("JAXDIFF_XLA_CPU_DEFAULTS", "1") == "0":
        return 0
    n = n or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if (n <= 1 or CPU_DEVICES_FLAG in _USER_XLA_FLAGS or os.environ.get("JAX_NUM_CPU_DEVICES")
            or _backends_started(f"{n} CPU devices")):
        return 0
    import jax
    global _SAMPLING_CPU_DEVICES
    jax.config.update("jax_num_cpu_devices", n)
    _SAMPLING_CPU_DEVICES = n
    return n


def sampling_cpu_devices() -> int:
    """The CPU device count `set_cpu_devices` gave this process for sampling, or 0 when it set none (the user's
    XLA_FLAGS / JAX_NUM_CPU_DEVICES, or the default single CPU device)."""
    return _SAMPLING_CPU_DEVICES


ONE_SHOT_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def run_once_compiled(fn, *args, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)(*args)` for a function that runs once per process (parameter init).

    On the CPU backend it is compiled with `ONE_SHOT_CPU_COMPILER_OPTIONS` (XLA backend optimisation level 0: LLVM
    barely optimises, which matters little for code that runs once): the quickstart UNet's init compiles in ~4 s
    instead of ~8 s on the 2-core CPU (`python -m benchmarks.micro --limits`), with the same values up to rounding
    in the last bit of a few entries (tests/test_train_step.py compares it with the default compile). GPU and TPU
    use the default options."""
    import jax
    jitted = jax.jit(fn, **jit_kwargs)
    if jax.default_backend() != "cpu":
        return jitted(*args)
    return jitted.lower(*args).compile(compiler_options=ONE_SHOT_CPU_COMPILER_OPTIONS)(*args)


MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"


def reexec_with_malloc_defaults() -> None:
    """Re-run this process (same interpreter, same arguments) with `MALLOC_TUNABLE` added to GLIBC_TUNABLES, once,
    on Linux with glibc; no-op when GLIBC_TUNABLES already sets hugetlb or `JAXDIFF_XLA_CPU_DEFAULTS=0`. For
    command-line entry points only (call it before any work: the process is replaced)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (os.environ.get("JAXDIFF_XLA_CPU_DEFAULTS", "1") == "0" or "glibc.malloc.hugetlb" in tunables
            or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, MALLOC_TUNABLE])))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


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
