"""Time one training step of the full-size TransUNet-style segmenter (49,455,873 parameters + VAE head) at 240x240.

    python -m benchmarks.s0_full_step [--batch 2] [--steps 3]

Prints compile time, the median step time, XLA's compiled memory of the step (one device: arguments, outputs,
the part of the outputs aliased to donated arguments, temporaries), the state's bytes by part (parameters, EMA,
optimiser state) and the process's malloc'd bytes: live before the step and sampled peak during it (the
benchmark's `sampled_peak_mb` method), so the runtime's overhead over XLA's own plan can be read off.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import jax
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    from jaxdiff import tasks
    from jaxdiff.training import sharding as shd
    from jaxdiff.training.state import make_optimizer
    from jaxdiff.training.step import compile_train_step, init_state
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "transformer_unet_brats.py")
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    config.train.batch_size = args.batch
    task = tasks.build(config)
    mesh = shd.make_mesh(config.mesh)
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (args.batch, 240, 240, 1)).astype(np.float32),
             "mask": (rng.uniform(size=(args.batch, 240, 240, 1)) > 0.9).astype(np.float32)}
    gbatch = shd.global_batch(batch, mesh)
    state, shardings = init_state(task, make_optimizer(config.train), jax.random.PRNGKey(0), gbatch, mesh)
    step = compile_train_step(task, config.train, mesh, shardings)
    t0 = time.perf_counter()
    compiled = step.lower(state, gbatch, jax.random.PRNGKey(1)).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    from benchmarks import memory

    def mib(tree) -> float:
        return round(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 2 ** 20, 1)

    parts = {name: mib(getattr(state, name)) for name in ("params", "ema_params", "opt_state", "model_state")
             if hasattr(state, name)}
    live_before = memory.malloc_live_mb()
    times = []
    with memory.sampled_peak() as peak:
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, m = compiled(state, gbatch, jax.random.PRNGKey(1))
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    print(json.dumps({"batch": args.batch, "compile_s": round(compile_s, 1),
                      "step_s_median": round(float(np.median(times)), 2), "loss": float(m["loss"]),
                      "compiled_temp_MiB": round(mem.temp_size_in_bytes / 2 ** 20),
                      "compiled_argument_MiB": round(mem.argument_size_in_bytes / 2 ** 20),
                      "compiled_output_MiB": round(mem.output_size_in_bytes / 2 ** 20),
                      "compiled_alias_MiB": round(mem.alias_size_in_bytes / 2 ** 20),
                      "state_MiB": parts, "malloc_live_before_MB": round(live_before),
                      "malloc_sampled_peak_MB": round(peak["peak_mb"]),
                      "devices": jax.device_count(), "backend": jax.default_backend()}))


if __name__ == "__main__":
    main()
