"""The command-line layer: `python -m jaxdiff.{train,sample,evaluate,predict,summary,prepare_data,sam}`.

Each entry point parses its flags and config, calls `jaxdiff.platform.setup` once before JAX starts (XLA:CPU
flags, the malloc tunable, CPU device count, compilation cache), then builds what it runs
(`jaxdiff.experiment.build`, `jaxdiff.experiment.load_for_inference`) and hands it to the library. Library modules
do not import from here; `jaxdiff/<name>.py` keeps `python -m jaxdiff.<name>` working.
"""
from __future__ import annotations

from jaxdiff import platform


def cpu_devices(flag: int | None):
    """`--cpu_devices` as `platform.setup` takes it: unset is one device per core unless JAXDIFF_XLA_CPU_DEFAULTS=0."""
    return platform.DEFAULT_CPU_DEVICES if flag is None else flag


def own_argv(argv) -> bool:
    """True when `main` parses this process's own command line (argv None): only then may setup re-run the
    process (with the malloc tunable) from `sys.orig_argv`; a `main([...])` call from Python never does."""
    return argv is None


def sampler_flag(fv) -> None:
    """Define `--sampler` on absl FlagValues `fv` (sample, evaluate, predict)."""
    from absl import flags
    flags.DEFINE_string("sampler", "", "Diffusion sampler: ddim, ddpm or dpm++ (DPM-Solver++(2M), accurate in 10-20 "
                        "steps with --steps); empty: the run's diffusion.sampler.", flag_values=fv)


def sampler_overrides(fv) -> dict:
    """{"diffusion.sampler": ...} for `load_for_inference` from `--sampler`; InputError naming the flag for an
    unknown sampler (checked before anything is restored)."""
    if not fv.sampler:
        return {}
    from jaxdiff.errors import InputError
    from jaxdiff.tasks.diffusion_task import SAMPLERS
    if fv.sampler not in SAMPLERS:
        raise InputError(f"--sampler: {fv.sampler!r} is not one of {', '.join(SAMPLERS)}")
    return {"diffusion.sampler": fv.sampler}
