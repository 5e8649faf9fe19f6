"""The training loop behind `python -m jaxdiff.train`.

Builds the task, mesh, data iterator and sharded state; resumes from the latest checkpoint; runs the compiled
step with a progress bar; logs `metrics.jsonl` and TensorBoard events; checkpoints; stops cleanly on SIGTERM /
SIGINT (finishing the current step and saving); and ends with the task's report (samples and a metric).
"""
from __future__ import annotations

import json
import os
import signal
import time

import jax
from tqdm.auto import tqdm

from jaxdiff import config as config_lib
from jaxdiff import data, tasks
from jaxdiff.errors import InputError
from jaxdiff.io import files
from jaxdiff.training import sharding as shd
from jaxdiff.training.checkpoint import Checkpointer
from jaxdiff.training.state import make_optimizer
from jaxdiff.training.step import compile_train_step, init_state


class MetricLogger:
    """Appends one JSON object per logged step to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if enabled and files.is_local(workdir):  # TensorBoard events for local work directories
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in metrics.items()}
        files.append_line(self.path, json.dumps({"step": step, **scalars}))
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, step)
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (preemption-safe exit)."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _data_iterator(config, task, split: str):
    source = data.get_source(config.data, split)
    global_bs = int(config.train.batch_size)
    if global_bs % jax.process_count():
        raise InputError(f"config key train.batch_size: {global_bs} not divisible by {jax.process_count()} processes")
    ds = data.make_dataset(source, global_bs // jax.process_count(), seed=int(config.seed), shuffle=True,
                           worker_count=int(config.data.get("num_workers", 0)),
                           transform=data.pipeline.train_transform(config.data))
    return iter(ds)


def train(config, workdir: str, quiet: bool = False) -> dict:
    """Train (or resume) the experiment `config` in `workdir`; returns the final report dict."""
    task = tasks.build(config)
    mesh = shd.make_mesh(config.get("mesh"))
    train_iter = _data_iterator(config, task, "train")
    val_source = data.get_source(config.data, "val")
    tc = config.train
    steps = int(tc.steps)
    rng = jax.random.PRNGKey(int(config.seed))
    init_rng, step_rng, final_rng = jax.random.split(rng, 3)

    local_bs = int(tc.batch_size) // jax.process_count()
    example = shd.global_batch(task.example_batch(local_bs), mesh)
    state, state_shardings = init_state(task, make_optimizer(tc), init_rng, example, mesh,
                                        fsdp_min_size=int(config.get("mesh", {}).get("fsdp_min_size", 2 ** 14)))
    files.makedirs(workdir)
    ckpt = Checkpointer(workdir, every=int(tc.get("ckpt_every", 1000)), keep=int(tc.get("keep_checkpoints", 3)))
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state, train_iter)
    is_main = jax.process_index() == 0
    if is_main:
        files.write_text(os.path.join(workdir, "config.json"), config_lib.to_json(config))
    step_fn = compile_train_step(task, tc, mesh, state_shardings)
    logger = MetricLogger(workdir, enabled=is_main)
    log_every, max_bad = int(tc.get("log_every", 50)), int(tc.get("max_bad_steps", 20))
    start = int(jax.device_get(state.step))
    timing = {}
    with StopSignal() as stop, tqdm(total=steps, initial=start, disable=quiet or not is_main,
                                    desc="train", dynamic_ncols=True) as bar:
        t_last, n_last = time.perf_counter(), start
        for step in range(start + 1, steps + 1):
            batch = shd.global_batch(next(train_iter), mesh)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch, step_rng)
            if "first_step_s" not in timing:
                jax.block_until_ready(metrics)
                timing["first_step_s"] = time.perf_counter() - t0
                t_last, n_last = time.perf_counter(), step
            bar.update(1)
            if step % log_every == 0 or step == steps or stop.received:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                rate = (step - n_last) / max(now - t_last, 1e-9) if step > n_last else float("nan")
                t_last, n_last = now, step
                logger.write(step, {**metrics, "steps_per_s": rate})
                bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", steps_s=f"{rate:.2f}")
                if int(jax.device_get(state.bad_streak)) >= max_bad:
                    ckpt.close()
                    raise SystemExit(f"error: {max_bad} non-finite steps in a row at step {step}; stopped. "
                                     f"The last good checkpoint is in {ckpt.directory}.")
            ckpt.save(step, state, train_iter)
            if stop.received:
                ckpt.save(step, state, train_iter, force=True)
                ckpt.close()
                logger.close()
                print(f"{stop.received} received: saved step {step} to {ckpt.directory}; re-run to resume.")
                return {"stopped_at": step}
    if ckpt.latest_step() != steps:
        ckpt.save(steps, state, train_iter, force=True)
    ckpt.close()
    logger.close()
    report = task.finalize(state, workdir, val_source, final_rng) if is_main else {}
    report = {"step": int(jax.device_get(state.step)), **timing, **report}
    if is_main:
        files.write_text(os.path.join(workdir, "report.json"), json.dumps(report, indent=2, default=float))
    return report
