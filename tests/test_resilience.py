"""Surviving interruptions, as real training runs: SIGTERM saves and exits 0, kill -9 leaves a complete
checkpoint to resume from, a run of non-finite steps stops with one error line, and runs are bitwise
deterministic."""
from __future__ import annotations

import random
import signal
import time

import numpy as np
import pytest

from test_loop import (assert_same_state, checkpoint_steps, jax_env, load_state, metrics_lines,  # noqa: F401
                       start_train, state_leaves, train)

pytestmark = pytest.mark.slow


def _wait_for_steps(proc, workdir, n: int, checkpoints: int = 0, timeout: float = 300.0):
    """Block until a running training process has logged `n` steps and completed `checkpoints` checkpoints."""
    deadline = time.monotonic() + timeout
    while len(metrics_lines(workdir)) < n or len(checkpoint_steps(workdir)) < checkpoints:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {n} logged steps and {checkpoints} checkpoints within {timeout} s")
        time.sleep(0.1)


def _resume(workdir, extra_steps: int, env) -> int:
    """Re-run in `workdir` for `extra_steps` more steps after its latest checkpoint; returns that step and
    checks the log then holds every step once (the interrupted run's rows past the checkpoint are dropped)."""
    latest = checkpoint_steps(workdir)[-1]
    train(workdir, f"--config.train.steps={latest + extra_steps}", env=env)
    assert [m["step"] for m in metrics_lines(workdir)] == list(range(1, latest + extra_steps + 1))
    assert int(load_state(workdir).step) == latest + extra_steps
    return latest


@pytest.mark.parametrize("ckpt_every", ["1000", "1"], ids=["between_checkpoints", "on_a_checkpoint_step"])
def test_sigterm_saves_the_step_reached_and_exits_0(tmp_path, jax_env, ckpt_every):
    workdir = tmp_path / "run"
    proc = start_train(workdir, "--config.train.steps=1000", f"--config.train.ckpt_every={ckpt_every}", env=jax_env)
    _wait_for_steps(proc, workdir, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    reached = metrics_lines(workdir)[-1]["step"]
    assert f"SIGTERM received: saved step {reached}" in out
    assert checkpoint_steps(workdir)[-1] == reached and int(load_state(workdir).step) == reached
    assert _resume(workdir, 2, jax_env) == reached


def test_kill_9_leaves_a_complete_checkpoint_to_resume_from(tmp_path, jax_env):
    """SIGKILL at a random moment while checkpointing every step (saves are asynchronous)."""
    workdir = tmp_path / "run"
    proc = start_train(workdir, "--config.train.steps=1000", "--config.train.ckpt_every=1", env=jax_env)
    _wait_for_steps(proc, workdir, 2, checkpoints=1)
    time.sleep(random.Random(0).uniform(0.0, 1.5))
    proc.kill()
    proc.communicate(timeout=60)
    latest = checkpoint_steps(workdir)[-1]
    assert latest >= 1 and int(load_state(workdir).step) == latest      # orbax restores the latest step
    _resume(workdir, 2, jax_env)


@pytest.mark.parametrize("lr", [
    "1e30",
    "inf",
])
def test_non_finite_steps_stop_the_run_with_finite_parameters_kept(tmp_path, jax_env, lr):
    """A learning rate that blows the parameters up makes every later loss non-finite: those updates are
    skipped, and after train.max_bad_steps of them in a row the run stops with one error line."""
    workdir = tmp_path / "run"
    proc = start_train(workdir, "--config.train.steps=50", f"--config.train.lr={lr}",
                       "--config.train.max_bad_steps=3", "--config.train.ckpt_every=1", env=jax_env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode not in (0, 2), err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "3 non-finite steps in a row" in errors[0] and "Traceback" not in err, err[-3000:]
    lines = metrics_lines(workdir)
    assert [m["finite"] for m in lines[-3:]] == [0, 0, 0] and lines[-1]["skipped"] == 3
    assert lines[-1]["step"] < 50
    state = load_state(workdir)
    assert int(state.step) <= lines[-1]["step"]
    for name, value in state_leaves(state).items():
        assert np.all(np.isfinite(value)), name


def test_same_command_twice_gives_bitwise_identical_parameters(tmp_path, jax_env):
    for name in ("a", "b"):
        train(tmp_path / name, "--config.train.steps=3", env=jax_env)
    assert_same_state(load_state(tmp_path / "a"), load_state(tmp_path / "b"))
