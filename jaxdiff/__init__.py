"""jaxdiff: medical-imaging diffusion and segmentation models in JAX/Flax.

Layout (see README): `models` (Flax modules), `diffusion` (schedules, losses, samplers), `tasks` (loss and
prediction per task), `training` (the shared sharded step, loop, checkpoints), `data` (grain pipelines),
`metrics`, `io`, `viz`; `experiment.build(config)` makes the task, mesh, optimiser and data a run needs;
`platform` holds everything backend-specific (XLA:CPU flags, the malloc tunable, CPU device counts, the
compilation cache), applied by the command-line layer `cli` with one call, `platform.setup`. Command-line entry
points: `python -m jaxdiff.{train,sample,evaluate,predict,summary,prepare_data,sam}`.

Importing jaxdiff changes no environment variable and starts no process.
"""
__version__ = "0.1.0"

# Names that lived here before `jaxdiff.platform`: still reachable as `jaxdiff.<name>`, with a DeprecationWarning.
_MOVED_TO_PLATFORM = ("CPU_XLA_FLAGS", "YNN_FUSION_FLAG", "YNN_FUSION_TYPES", "set_cpu_fusion", "CPU_DEVICES_FLAG",
                      "set_cpu_devices", "sampling_cpu_devices", "ONE_SHOT_CPU_COMPILER_OPTIONS", "run_once_compiled",
                      "MALLOC_TUNABLE", "reexec_with_malloc_defaults", "COMPILATION_CACHE_ENV",
                      "CACHE_MIN_COMPILE_TIME_S", "CACHE_MAX_BYTES", "compilation_cache_dir",
                      "enable_compilation_cache")


def __getattr__(name):
    if name in _MOVED_TO_PLATFORM:
        import warnings
        from jaxdiff import platform
        warnings.warn(f"jaxdiff.{name} moved to jaxdiff.platform.{name} (the old name goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        return getattr(platform, name)
    raise AttributeError(f"module 'jaxdiff' has no attribute {name!r}")
