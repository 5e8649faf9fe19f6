"""Cascaded sampling (Cascaded Diffusion Models, Ho et al. 2022): a base generator, then super-resolution stages,
each from its work directory.

    python -m jaxdiff.sample --cascade W_BASE,W_SR1,W_SR2 --num 4 [--steps 50,25,25] [--seed 0] --out DIR

The base stage is a "generation" task, every later stage a "super_resolution" task whose low-res size is the
previous stage's image size. Each stage's raw output in [-1, 1] is the next stage's low-res input (as in
the paper); each stage is one jitted `lax.scan` with the EMA parameters. Writes DIR/stage{k}_{H}x{W}/grid.png and
sample_{i:03d}.png per stage.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.io import files
from jaxdiff.viz import grid


def load_stages(workdirs):
    """[(workdir, task, state)] for the stage work directories; InputError if one is missing, the first is not a
    generator, a later one not a super-resolution stage, or the sizes do not chain."""
    from jaxdiff.experiment import load_for_inference
    from jaxdiff.tasks.base import CAPABILITIES
    stages = []
    for k, w in enumerate(workdirs):
        if not os.path.isdir(w):
            raise InputError(f"{w}: cascade stage {k} work directory not found")
        _, task, state = load_for_inference(w)
        wanted = "generate" if k == 0 else "upscale"
        if not isinstance(task, CAPABILITIES[wanted]):
            raise InputError(f"{w}: stage {k} must be a {'generation' if k == 0 else 'super_resolution'} run "
                             f"(its task is {task.config.task!r})")
        if k and task.low_res_shape() != stages[-1][1].image_shape():
            raise InputError(f"{w}: stage {k} takes low-res {task.low_res_shape()} but stage {k - 1} "
                             f"({stages[-1][0]}) makes {stages[-1][1].image_shape()}")
        stages.append((w, task, state))
    return stages


def parse_steps(steps: str, num_stages: int) -> list:
    """"50,25,25" -> [50, 25, 25]; "" or "0" -> each stage's configured steps (None); one number -> all stages."""
    try:
        values = [int(s) for s in str(steps or "0").split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--steps {steps!r}: expected integers separated by commas") from None
    if len(values) == 1:
        values = values * num_stages
    if len(values) != num_stages or min(values) < 0:
        raise InputError(f"--steps {steps!r}: give one non-negative step count or one per stage ({num_stages})")
    return [v or None for v in values]


def run(workdirs, out_dir: str, num: int, steps: str = "", seed: int = 0) -> list[str]:
    """Run the cascade of `workdirs` (base first) for `num` samples; returns the written PNG paths."""
    if len(workdirs) < 2:
        raise InputError(f"--cascade {','.join(workdirs)}: give a base and at least one super-resolution workdir")
    stage_steps = parse_steps(steps, len(workdirs))
    stages = load_stages(workdirs)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(stages))
    paths, images = [], None
    for k, ((_, task, state), n_steps, key) in enumerate(zip(stages, stage_steps, keys)):
        variables = state.variables(ema=True)
        images = (task.generate(variables, num, key, num_steps=n_steps) if k == 0
                  else task.upscale(variables, images, key, num_steps=n_steps))
        folder = os.path.join(out_dir, f"stage{k}_{images.shape[1]}x{images.shape[2]}")
        paths += save_stage(np.asarray(jax.device_get(images)), folder)
    return paths


def save_stage(images: np.ndarray, folder: str) -> list[str]:
    """Write (N, H, W, C) images in [-1, 1] as folder/grid.png and folder/sample_{i:03d}.png (H x W pixels)."""
    from PIL import Image
    paths = [grid.save_grid(images, os.path.join(folder, "grid.png"))]
    for i, x in enumerate(grid.make_grid(im[None], ncol=1, pad=0) for im in images):
        path = os.path.join(folder, f"sample_{i:03d}.png")
        with files.open_write(path) as f:
            Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(f, format="PNG")
        paths.append(path)
    return paths
