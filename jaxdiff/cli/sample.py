"""Generate (or segment) with the latest checkpoint of a work directory.

    python -m jaxdiff.sample --workdir DIR [--num 16] [--steps 50] [--sampler dpm++] [--seed 0] [--out DIR/samples]
                             [--cpu_devices 0]
    python -m jaxdiff.sample --cascade W_BASE,W_SR1,W_SR2 --num 4 [--steps 50,25,25] --out DIR

Writes PNG for 2D and NIfTI (with the source affine) for 3D; prints the written paths as JSON. `--cascade` runs
a base generator and super-resolution stages from their work directories (`jaxdiff.cli.cascade`), each stage one
scan with its own step count, and writes every stage's images. The batch is split over the devices (data
parallel; on a CPU one XLA device per core unless --cpu_devices says otherwise, see `jaxdiff.platform.set_cpu_devices`).

It draws from generative runs (tasks generation and super_resolution). A segmentation or classification work
directory is refused with one `error:` line naming what to run instead (`python -m jaxdiff.evaluate`), before
anything is restored.
"""
from __future__ import annotations

import json
import os
import sys

from jaxdiff import cli, platform
from jaxdiff import config as config_lib
from jaxdiff.errors import InputError, cli_errors


def _flags(fv):
    from absl import flags
    flags.DEFINE_string("workdir", None, "Trained work directory.", flag_values=fv)
    flags.DEFINE_list("cascade", None, "Work directories of a cascade: base generator, then SR stages.",
                      flag_values=fv)
    flags.DEFINE_integer("num", 16, "Number of samples.", flag_values=fv)
    flags.DEFINE_string("steps", "0", "Sampler steps (0: the config's diffusion.sample_steps); with --cascade "
                        "one per stage, comma-separated.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder (default WORKDIR/samples).", flag_values=fv)
    cli.sampler_flag(fv)
    flags.DEFINE_integer("cpu_devices", None, "XLA CPU devices the batch is split over (0 or unset: one per core; "
                         "1: one device whose operations use every core). CPU backend only.", flag_values=fv)


SEGMENTATION_TASKS = ("segmentation", "segmentation_diffusion", "promptable_segmentation")


def check_task(workdir: str) -> None:
    """InputError (one line saying what to run instead) when the run in `workdir` is of a task that draws no
    samples; read from its config.json only (nothing is built). An unreadable config.json passes:
    `load_for_inference` reports it."""
    from jaxdiff import experiment, tasks
    config = experiment.saved_config(workdir)
    task = str(config.get("task", "")) if config is not None else ""
    if task not in tasks.TASKS:
        return  # tasks.build names the unknown task
    if tasks.supports(task, "sample"):
        return
    kind = "segmentation" if task in SEGMENTATION_TASKS else task
    scores = (f"its end-of-run scores on the val split are in {os.path.join(workdir, 'report.json')}"
              if task == "promptable_segmentation" else
              f"score it with python -m jaxdiff.evaluate --workdir {workdir}")
    planned = (f"; segment your own scans with python -m jaxdiff.predict --workdir {workdir} --input PATH "
               f"--output DIR" if task in ("segmentation", "segmentation_diffusion", "classification") else "")
    raise InputError(f"{workdir} is a {kind} run (task {task}); sample draws images from generative models: "
                     f"{scores}{planned}")


def main(argv=None) -> int:
    reexec = cli.own_argv(argv)
    argv = list(sys.argv if argv is None else argv)
    with cli_errors():
        _, fv = config_lib.parse(argv, _flags, require_config=False)
        if (fv.workdir is None) == (fv.cascade is None):
            raise InputError("give exactly one of --workdir DIR or --cascade W_BASE,W_SR1,...")
        overrides = cli.sampler_overrides(fv)
        if fv.workdir is not None:
            check_task(fv.workdir)
        if fv.out:
            config_lib.check_output_dir(fv.out, "--out")
        if fv.cascade is not None and not fv.out:
            raise InputError("--cascade needs --out DIR")
        from jaxdiff import experiment
        base = fv.workdir or fv.cascade[0]  # a cascade runs with its base stage's xla_cpu_fusion
        platform.setup(experiment.saved_config(base), cpu_devices=cli.cpu_devices(fv.cpu_devices), reexec=reexec)
        if fv.cascade is not None:
            from jaxdiff.cli import cascade
            print(json.dumps({"written": cascade.run(fv.cascade, fv.out, fv.num, fv.steps, fv.seed)}))
            return 0
        import jax
        from jaxdiff.cli.cascade import parse_steps
        config, task, state = experiment.load_for_inference(fv.workdir, overrides)
        out = fv.out or os.path.join(fv.workdir, "samples")
        paths = task.sample_to_files(state, out, num=fv.num, steps=parse_steps(fv.steps, 1)[0],
                                     rng=jax.random.PRNGKey(fv.seed))
        print(json.dumps({"written": paths}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
