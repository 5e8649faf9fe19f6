"""Evaluate the latest checkpoint of a work directory on held-out data.

    python -m jaxdiff.evaluate --workdir DIR [--split test] [--num 64] [--steps 0] [--seed 0] [--cpu_devices 0]

Prints one JSON object of metrics on stdout and writes it (with per-case values) to DIR/eval_<split>/.
Diffusion segmentation (MedSegDiff) samples its ensembles split over the devices: on a CPU one XLA device per core
unless --cpu_devices says otherwise (`jaxdiff.set_cpu_devices`).
"""
from __future__ import annotations

import os
import sys

import jaxdiff
from jaxdiff import config as config_lib
from jaxdiff.errors import InputError, cli_errors


def _flags(fv):
    from absl import flags
    flags.DEFINE_string("workdir", None, "Trained work directory.", flag_values=fv, required=True)
    flags.DEFINE_string("split", "test", "Data split: val or test.", flag_values=fv)
    flags.DEFINE_integer("num", 0, "Number of examples (0: the config's eval.num_examples or all).",
                         flag_values=fv)
    flags.DEFINE_integer("steps", 0, "Sampler steps for diffusion tasks (0: config).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Evaluation seed.", flag_values=fv)
    flags.DEFINE_integer("cpu_devices", None, "Diffusion segmentation: XLA CPU devices the sampled ensembles are "
                         "split over (0 or unset: one per core; 1: one device). CPU backend only.", flag_values=fv)


SAMPLING_TASKS = ("segmentation_diffusion",)  # evaluations that run a sampler (split over the devices)


def _task_name(workdir: str) -> str | None:
    """config.task of a work directory, or None when its config is unreadable (load_for_inference reports that)."""
    try:
        return str(config_lib.from_json_file(os.path.join(workdir, "config.json")).get("task", ""))
    except InputError:  # the one-line error comes from load_for_inference
        return None


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    with cli_errors():
        _, fv = config_lib.parse(argv, _flags, require_config=False)
        if _task_name(fv.workdir) in SAMPLING_TASKS:  # before JAX starts; other tasks keep one device
            jaxdiff.set_cpu_devices(fv.cpu_devices)
        import jax
        from jaxdiff import data
        from jaxdiff.io import files
        from jaxdiff.training.checkpoint import load_for_inference
        config, task, state = load_for_inference(fv.workdir)
        if not hasattr(task, "evaluate"):
            raise InputError(f"config key task: {config.task!r} has no evaluation; use jaxdiff.sample")
        source = data.get_source(config.data, fv.split)
        out_dir = os.path.join(fv.workdir, f"eval_{fv.split}")
        result = task.evaluate(state, source, out_dir, jax.random.PRNGKey(fv.seed), num=fv.num or None,
                               num_steps=fv.steps or None)
        result = {"split": fv.split, "step": int(jax.device_get(state.step)), **result}
        files.write_text(os.path.join(out_dir, "metrics.json"), files.strict_json(result, indent=2))
        print(files.strict_json(result))
    return 0


if __name__ == "__main__":
    jaxdiff.reexec_with_malloc_defaults()
    sys.exit(main())
