"""Generate (or segment) with the latest checkpoint of a work directory.

    python -m jaxdiff.sample --workdir DIR [--num 16] [--steps 50] [--seed 0] [--out DIR/samples]

Writes PNG for 2D and NIfTI (with the source affine) for 3D; prints the written paths as JSON.
"""
from __future__ import annotations

import json
import os
import sys

from jaxdiff import config as config_lib
from jaxdiff.errors import cli_errors


def _flags(fv):
    from absl import flags
    flags.DEFINE_string("workdir", None, "Trained work directory.", flag_values=fv, required=True)
    flags.DEFINE_integer("num", 16, "Number of samples.", flag_values=fv)
    flags.DEFINE_integer("steps", 0, "Sampler steps (0: the config's diffusion.sample_steps).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder (default WORKDIR/samples).", flag_values=fv)


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    with cli_errors():
        _, fv = config_lib.parse(argv, _flags, require_config=False)
        import jax
        from jaxdiff.training.checkpoint import load_for_inference
        config, task, state = load_for_inference(fv.workdir)
        out = fv.out or os.path.join(fv.workdir, "samples")
        paths = task.sample_to_files(state, out, num=fv.num, steps=fv.steps or None,
                                     rng=jax.random.PRNGKey(fv.seed))
        print(json.dumps({"written": paths}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
