"""The training loop behind `python -m jaxdiff.train`.

Handed the experiment's parts (task, mesh, optimiser, training batches, val source: `jaxdiff.experiment.build`),
it creates the sharded state; resumes from the latest checkpoint; runs the compiled
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
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from jaxdiff import config as config_lib
from jaxdiff.io import files
from jaxdiff.progress import quiet_progress
from jaxdiff.training import sharding as shd
from jaxdiff.training.checkpoint import Checkpointer
from jaxdiff.training.step import compile_train_step, init_state


def _summary_writer(logdir: str, **kwargs):
    """tensorboardX's SummaryWriter(logdir, **kwargs), imported without PyTorch: tensorboardX imports torch whenever
    it is installed (only to accept torch tensors), which would add seconds to every start-up."""
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None          # makes `import torch` fail inside tensorboardX
    try:
        from tensorboardX import SummaryWriter
    finally:
        if block:
            del sys.modules["torch"]
    files.register_tensorboard_filesystems()  # gs:// logdirs through epath
    return SummaryWriter(logdir, **kwargs)


class MetricLogger:
    """Appends one JSON object per logged step to `metrics.jsonl` and mirrors scalars to TensorBoard.

    A run that resumes from step `start` (0: a fresh run) continues logs that a killed run may have taken past its
    last checkpoint: those rows (steps > start) are dropped from `metrics.jsonl` (rewritten atomically, local or
    cloud path) and the new TensorBoard event file starts with a purge marker at step start + 1 (tensorboardX's
    `purge_step`: TensorBoard hides the earlier files' events from that step on), so each step is logged once.
    """

    def __init__(self, workdir: str, enabled: bool = True, start: int = 0):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if enabled:
            drop_rows_after(self.path, start)
        if enabled:  # TensorBoard events (local folder or URL)
            logdir = os.path.join(workdir, "tensorboard")
            earlier = any(n.startswith("events.out.tfevents") for n in files.listdir(logdir))
            self.tb = _summary_writer(logdir, purge_step=start + 1 if earlier else None,
                                      filename_suffix=f".from_step{start}")  # a resume in the same second: new file

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


def drop_rows_after(path: str, step: int) -> int:
    """Remove the rows of steps after `step` from the JSON-lines log `path`, and a last line cut short by a kill;
    the file is rewritten atomically (a temporary file renamed over it), and only when something goes. Returns the
    number of lines removed (0 when the file does not exist)."""
    p = files.path(path)
    if not p.exists():
        return 0
    text = p.read_text()
    kept, dropped = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:                        # a line the killed run did not finish writing
            dropped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    new = "".join(line + "\n" for line in kept)
    if new != text:
        tmp = p.parent / f".{p.name}.{os.getpid()}.tmp"
        tmp.write_text(new)
        tmp.replace(p)
    return dropped


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


def _report_state(state):
    """The state for the end-of-run report, which runs on process 0 alone: with several processes its
    evaluation arrays are gathered into host memory (every process joins this collective), so the report's
    computations use local devices only."""
    if jax.process_count() == 1:
        return state
    return multihost_utils.process_allgather(state.replace(opt_state=None), tiled=True)


def _num_scored(report: dict) -> int | None:
    """The number of held-out examples (segmentation, classification) or generated samples (generation, super-
    resolution) a task's end-of-run report scored."""
    for key in ("num_cases", "num_examples", "num_scored"):
        if report.get(key) is not None:
            return int(report[key])
    return None


def train(config, workdir: str, *, task, mesh, optimizer, train_iter, val_source, quiet: bool = False) -> dict:
    """Train (or resume) the experiment `config` in `workdir`; returns the final report dict.

    Args:
      config: the whole config (its `train` block, `seed` and `mesh.fsdp_min_size` are read; saved as config.json).
      workdir: the work directory (local or cloud path), created after the first batch is read.
      task: the task (`tasks.base.Task`): loss, example batch, `initial_state`, end-of-run `finalize`.
      mesh: the ("data", "fsdp") mesh the step runs on.
      optimizer: the optax optimiser.
      train_iter: checkpointable iterator of this process's rows of the training batches.
      val_source: the val split's source, for `task.finalize`.
    `jaxdiff.experiment.build(config)` makes the five parts.
    """
    tc = config.train
    steps = int(tc.steps)
    rng = jax.random.PRNGKey(int(config.seed))
    init_rng, step_rng, final_rng = jax.random.split(rng, 3)

    local_bs = int(tc.batch_size) // jax.process_count()
    example = shd.global_batch(task.example_batch(local_bs), mesh)
    state, state_shardings = init_state(task, optimizer, init_rng, example, mesh,
                                        fsdp_min_size=int(config.get("mesh", {}).get("fsdp_min_size", 2 ** 14)))
    first = [] if files.path(workdir).exists() or steps < 1 else [next(train_iter)]  # bad data: no new work directory
    files.makedirs(workdir)
    ckpt = Checkpointer(workdir, every=int(tc.get("ckpt_every", 1000)), keep=int(tc.get("keep_checkpoints", 3)))
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state, train_iter)
    else:  # a fresh run may start from given weights (classification: train.init_from)
        state = task.initial_state(state)
    start = int(jax.device_get(state.step))
    # Read the first batch before writing anything: bad data must leave an existing work directory as it was.
    batches = itertools.chain(first or [next(train_iter)], train_iter) if start < steps else iter(())
    is_main = jax.process_index() == 0
    if is_main:
        files.write_text(os.path.join(workdir, "config.json"), config_lib.to_json(config))
    step_fn = compile_train_step(task, tc, mesh, state_shardings)
    logger = MetricLogger(workdir, enabled=is_main, start=start)
    log_every, max_bad = int(tc.get("log_every", 50)), int(tc.get("max_bad_steps", 20))
    timing = {}
    # Multi-process runs agree on stopping at logging steps, at least every 10 steps.
    bar = tqdm(total=steps, initial=start, disable=quiet or not is_main, dynamic_ncols=True,
               desc="compiling the train step" if start < steps else "train")
    with StopSignal(mesh, every=min(log_every, 10)) as stop, bar:
        t_last, n_last = time.perf_counter(), start
        for step in range(start + 1, steps + 1):
            batch = shd.global_batch(next(batches), mesh)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch, step_rng)
            if "first_step_s" not in timing:
                jax.block_until_ready(metrics)
                timing["first_step_s"] = time.perf_counter() - t0
                t_last, n_last = time.perf_counter(), step
                if not bar.disable:
                    bar.write(f"train step compiled (or loaded from the compilation cache) and run once in "
                              f"{timing['first_step_s']:.1f} s", file=sys.stderr)
                    bar.set_description_str("train", refresh=False)
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
    with quiet_progress(quiet):
        report = task.finalize(report_state, workdir, val_source, final_rng) if is_main else {}
    scored = {"split": "val", "num_scored": _num_scored(report)} if is_main else {}  # finalize scores `val`
    report = {"step": int(jax.device_get(state.step)), **timing, **scored, **report}
    if is_main:
        files.write_text(os.path.join(workdir, "report.json"), files.strict_json(report, indent=2))
    return report
