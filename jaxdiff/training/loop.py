"""The training loop behind `python -m jaxdiff.train`.

Builds the task, mesh, data iterator and sharded state; resumes from the latest checkpoint; runs the compiled
step with a progress bar; logs `metrics.jsonl` and TensorBoard events; checkpoints; stops cleanly on SIGTERM /
SIGINT (finishing the current step and saving); and ends with the task's report (samples and a metric).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

import jaxdiff
from jaxdiff import config as config_lib
from jaxdiff import data, tasks
from jaxdiff.errors import InputError
from jaxdiff.io import files
from jaxdiff.training import sharding as shd
from jaxdiff.training.checkpoint import Checkpointer
from jaxdiff.training.state import make_optimizer
from jaxdiff.training.step import compile_train_step, init_state


def _summary_writer(logdir: str):
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch whenever it is
    installed (only to accept torch tensors), which would add seconds to every start-up."""
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None          # makes `import torch` fail inside tensorboardX
    try:
        from tensorboardX import SummaryWriter
    finally:
        if block:
            del sys.modules["torch"]
    return SummaryWriter(logdir)


class MetricLogger:
    """Appends one JSON object per logged step to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if enabled and files.is_local(workdir):  # TensorBoard events for local work directories
            self.tb = _summary_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict):
        """Log scalar `metrics` at `step`; in JSON a non-finite value (a skipped step's loss) is null."""
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in metrics.items()}
        finite = {k: v if math.isfinite(v) else None for k, v in scalars.items()}
        files.append_line(self.path, json.dumps({"step": step, **finite}, allow_nan=False))
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, step)
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (preemption-safe exit).

    With several processes a signal may reach only some of them (one preempted host), and all must save the
    same step: `agreed(step)` is checked by every process at the same steps (every `every` steps, one tiny
    all-reduce of the flags over `mesh`), so they stop together; in between, a signalled process keeps stepping.
    """

    def __init__(self, mesh=None, every: int = 1):
        self.received = None
        self.mesh, self.every = mesh, max(1, int(every))
        self._old = {}

    def agreed(self, step: int) -> str | None:
        """The signal name to stop on at `step`, the same on every process; None to go on."""
        if jax.process_count() == 1:
            return self.received
        if step % self.every:
            return None
        if not shd.any_process(self.received is not None, self.mesh):
            return None
        return self.received or "SIGTERM (on another process)"

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _local_rows(mesh, global_bs: int) -> np.ndarray:
    """Indices (ascending) of the global batch rows that this process's devices hold in the batch sharding."""
    index_map = shd.batch_sharding(mesh).addressable_devices_indices_map((global_bs,))
    return np.unique(np.concatenate([np.arange(global_bs)[idx[0]] for idx in index_map.values()]))


def _data_iterator(config, split: str, mesh):
    """Iterator of this process's rows of the global training batches (dicts of numpy arrays).

    The global batch stream (shuffle order, augmentation draws) is a function of the config alone, so a run
    gives the same results on 1 or N processes; process p reads only its rows p*L .. (p+1)*L - 1 of each
    global batch (grain shards by batch), which are the rows its devices hold in the batch sharding.
    """
    source = data.get_source(config.data, split)
    global_bs, n, p = int(config.train.batch_size), jax.process_count(), jax.process_index()
    if global_bs % mesh.size:
        raise InputError(f"config key train.batch_size: {global_bs} not divisible by the {mesh.size} devices")
    local_bs = global_bs // n
    if not np.array_equal(_local_rows(mesh, global_bs), np.arange(p * local_bs, (p + 1) * local_bs)):
        raise InputError("config key mesh: this process's devices do not hold a contiguous block of the batch")
    ds = data.make_dataset(source, local_bs, seed=int(config.seed), shuffle=True, shard_index=p, shard_count=n,
                           worker_count=int(config.data.get("num_workers", 0)),
                           transform=data.pipeline.train_transform(config.data))
    return iter(ds)


def _report_state(state):
    """The state for the end-of-run report, which runs on process 0 alone: with several processes its
    evaluation arrays are gathered into host memory (every process joins this collective), so the report's
    computations use local devices only."""
    if jax.process_count() == 1:
        return state
    return multihost_utils.process_allgather(state.replace(opt_state=None), tiled=True)


def train(config, workdir: str, quiet: bool = False) -> dict:
    """Train (or resume) the experiment `config` in `workdir`; returns the final report dict."""
    jaxdiff.set_cpu_fusion(config.get("xla_cpu_fusion"))
    task = tasks.build(config)
    mesh = shd.make_mesh(config.get("mesh"))
    train_iter = _data_iterator(config, "train", mesh)
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
    elif hasattr(task, "initial_state"):  # a fresh run may start from given weights (classification: train.init_from)
        state = task.initial_state(state)
    start = int(jax.device_get(state.step))
    # Read the first batch before writing anything: bad data must leave an existing work directory as it was.
    batches = itertools.chain([next(train_iter)], train_iter) if start < steps else iter(())
    is_main = jax.process_index() == 0
    if is_main:
        files.write_text(os.path.join(workdir, "config.json"), config_lib.to_json(config))
    step_fn = compile_train_step(task, tc, mesh, state_shardings)
    logger = MetricLogger(workdir, enabled=is_main)
    log_every, max_bad = int(tc.get("log_every", 50)), int(tc.get("max_bad_steps", 20))
    timing = {}
    # Multi-process runs agree on stopping at logging steps, at least every 10 steps.
    with StopSignal(mesh, every=min(log_every, 10)) as stop, tqdm(total=steps, initial=start, disable=quiet or not is_main,
                                    desc="train", dynamic_ncols=True) as bar:
        t_last, n_last = time.perf_counter(), start
        for step in range(start + 1, steps + 1):
            batch = shd.global_batch(next(batches), mesh)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch, step_rng)
            if "first_step_s" not in timing:
                jax.block_until_ready(metrics)
                timing["first_step_s"] = time.perf_counter() - t0
                t_last, n_last = time.perf_counter(), step
            bar.update(1)
            stopping = stop.agreed(step)
            if step % log_every == 0 or step == steps or stopping:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                rate = {"steps_per_s": (step - n_last) / max(now - t_last, 1e-9)} if step > n_last else {}
                t_last, n_last = now, step
                logger.write(step, {**metrics, **rate})
                bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", **rate)
                if int(jax.device_get(state.bad_streak)) >= max_bad:
                    ckpt.close()
                    raise SystemExit(f"error: {max_bad} non-finite steps in a row at step {step}; stopped. "
                                     f"The last good checkpoint is in {ckpt.directory}.")
            ckpt.save(step, state, train_iter, force=stopping is not None)
            if stopping:
                ckpt.close()
                logger.close()
                print(f"{stopping} received: saved step {step} to {ckpt.directory}; re-run to resume.")
                return {"stopped_at": step}
    if ckpt.latest_step() != steps:
        ckpt.save(steps, state, train_iter, force=True)
    ckpt.close()
    logger.close()
    report_state = _report_state(state)
    report = task.finalize(report_state, workdir, val_source, final_rng) if is_main else {}
    report = {"step": int(jax.device_get(state.step)), **timing, **report}
    if is_main:
        files.write_text(os.path.join(workdir, "report.json"), files.strict_json(report, indent=2))
    return report
