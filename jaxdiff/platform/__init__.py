"""Everything backend-specific, applied by the command-line layer through one call, `setup`, before JAX starts.

- `xla_flags`: the XLA:CPU defaults (`CPU_XLA_FLAGS`, YNNPACK fusions) and a config's `xla_cpu_fusion`;
- `malloc`: the glibc malloc tunable (transparent huge pages) the entry points re-run themselves with;
- `devices`: one XLA:CPU device per core for data-parallel sampling, and the devices a train mesh spans;
- `one_shot`: compile options for programs that run once (parameter initialisation);
- `compile_cache`: JAX's persistent compilation cache in the user's cache directory;
- `distributed`: joining a multi-host run;
- `native`: the native CPU kernels' build.

Importing jaxdiff (or this package) changes no environment variable and starts no process; library code runs
with JAX's own defaults unless the caller runs `setup` first. `JAXDIFF_XLA_CPU_DEFAULTS=0` turns the CPU defaults
(flags, tunable, device count) off.
"""
from __future__ import annotations

from jaxdiff.platform.compile_cache import (CACHE_MAX_BYTES, CACHE_MIN_COMPILE_TIME_S, COMPILATION_CACHE_ENV,
                                            compilation_cache_dir, enable_compilation_cache)
from jaxdiff.platform.devices import (CPU_DEVICES_FLAG, sampling_cpu_devices, sampling_only_cpu_devices,
                                      set_cpu_devices, train_devices)
from jaxdiff.platform.malloc import MALLOC_TUNABLE, reexec_with_malloc_defaults
from jaxdiff.platform.one_shot import ONE_SHOT_CPU_COMPILER_OPTIONS, run_once_compiled
from jaxdiff.platform.xla_flags import (MEMORY_SCHEDULER_FLAG, use_memory_minimising_scheduler,
                                        CPU_XLA_FLAGS, YNN_FUSION_FLAG, YNN_FUSION_TYPES, add_cpu_xla_flags,
                                        check_cpu_fusion, set_cpu_fusion)

DEFAULT_CPU_DEVICES = "default"  # `setup(cpu_devices=...)`: one per core unless JAXDIFF_XLA_CPU_DEFAULTS=0


def setup(config=None, *, cpu_devices=None, distributed: bool = False, reexec: bool = True,
          compilation_cache: bool = True) -> dict:
    """Prepare this process for jaxdiff's work on its backend; call it once, before JAX creates its backends.

    In order: checks the config's `xla_cpu_fusion` and `cpu_devices` (InputError naming the key or flag, before
    anything changes), re-runs the process with the malloc tunable (`reexec`: for a command-line entry point
    parsing its own argv; the process is replaced and runs again from the start), adds the XLA:CPU defaults to
    XLA_FLAGS, applies the config's `xla_cpu_fusion`, joins a multi-host run (`distributed`) or sets the CPU
    device count (`cpu_devices`: None leaves it, an int is `--cpu_devices` (0: one per core),
    `DEFAULT_CPU_DEVICES` one per core unless `JAXDIFF_XLA_CPU_DEFAULTS=0`), and turns on the persistent
    compilation cache (`compilation_cache`; its load check starts JAX's backends). Returns what it did:
    {"xla_flags": [...], "xla_cpu_fusion": bool, "cpu_devices": int, "compilation_cache": folder or None}."""
    check_cpu_fusion(config.get("xla_cpu_fusion") if config is not None else None)  # bad input: nothing changed
    if cpu_devices not in (None, DEFAULT_CPU_DEVICES) and int(cpu_devices) < 0:
        set_cpu_devices(int(cpu_devices))  # its InputError
    if reexec:
        reexec_with_malloc_defaults()
    done = {"xla_flags": add_cpu_xla_flags(),
            "xla_cpu_fusion": set_cpu_fusion(config.get("xla_cpu_fusion")) if config is not None else False,
            "cpu_devices": 0}
    if distributed:
        from jaxdiff.platform import distributed as distributed_lib
        distributed_lib.initialize()
    elif cpu_devices is not None:
        done["cpu_devices"] = set_cpu_devices(None if cpu_devices == DEFAULT_CPU_DEVICES else int(cpu_devices))
    done["compilation_cache"] = enable_compilation_cache() if compilation_cache else None
    return done


__all__ = ["setup", "MEMORY_SCHEDULER_FLAG", "use_memory_minimising_scheduler",
           "DEFAULT_CPU_DEVICES", "CPU_XLA_FLAGS", "YNN_FUSION_FLAG", "YNN_FUSION_TYPES", "add_cpu_xla_flags",
           "set_cpu_fusion", "CPU_DEVICES_FLAG", "set_cpu_devices", "sampling_cpu_devices",
           "sampling_only_cpu_devices", "train_devices", "MALLOC_TUNABLE", "reexec_with_malloc_defaults",
           "ONE_SHOT_CPU_COMPILER_OPTIONS", "run_once_compiled", "COMPILATION_CACHE_ENV", "CACHE_MIN_COMPILE_TIME_S",
           "CACHE_MAX_BYTES", "compilation_cache_dir", "enable_compilation_cache"]
