"""Multi-host training on this machine: 2 local processes x 4 virtual CPU devices (CPU collectives over
localhost) train, are preempted (SIGTERM to ONE process: both save the same step), and resume to the
parameters of 1 process with 8 devices."""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket

import pytest

from test_resilience import _wait_for_steps
import numpy as np

from test_loop import (assert_same_state, checkpoint_steps, jax_env, load_state, metrics_lines,  # noqa: F401
                       start_train, train)

pytestmark = pytest.mark.slow

GLOBAL_BATCH = "--config.train.batch_size=8"     # 4 rows per process, 1 per device


def _without_key_bias(path: str, leaf):
    """The state leaf without the attention key bias (the middle third of each `qkv` bias, in the parameters,
    EMA and Adam moments): softmax is invariant to it, so its gradient is rounding noise that Adam scales up to
    learning-rate-sized steps, different for every reduction order (1 x 8 vs 2 x 4 devices)."""
    if not path.endswith("['qkv']['bias']"):
        return leaf
    third = leaf.shape[-1] // 3
    return np.concatenate([leaf[..., :third], leaf[..., 2 * third:]], -1)


def _key_bias_only(path: str, leaf):
    """The attention key bias alone (empty for every other leaf): what `_without_key_bias` leaves out."""
    if not path.endswith("['qkv']['bias']"):
        return np.zeros((0,), leaf.dtype)
    third = leaf.shape[-1] // 3
    return leaf[..., third:2 * third]


LR = 1e-3  # the tiny run's constant learning rate (tests/test_loop.py TINY)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_2_processes(workdir, steps: int, env: dict, sigterm_after: int | None = None) -> list[str]:
    """Run the tiny training command as 2 processes of a distributed run; returns their stdouts. With
    `sigterm_after`, process 1 alone gets SIGTERM once process 0 has logged that many steps."""
    common = dict(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_NUM_PROCESSES="2",
                  JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}")
    procs = [start_train(workdir, GLOBAL_BATCH, f"--config.train.steps={steps}", "--distributed", env=env,
                         extra_env=dict(common, JAX_PROCESS_ID=str(i))) for i in range(2)]
    if sigterm_after:
        _wait_for_steps(procs[0], workdir, sigterm_after)
        procs[1].send_signal(signal.SIGTERM)
    try:       # drain both processes' pipes at once: a process blocked on a full pipe would stall the other
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(lambda proc: proc.communicate(timeout=900), procs))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {i} of 2, exit {proc.returncode}:\n" + "\n\n".join(
            f"process {j} stderr:\n{e[-2500:]}" for j, (_, e) in enumerate(outs))
    return [out for out, _ in outs]


@pytest.mark.slow
@pytest.mark.long
def test_multihost_2_processes_match_1_process_with_8_devices(tmp_path, jax_env):
    single, multi, steps = tmp_path / "single", tmp_path / "multi", 40
    train(single, GLOBAL_BATCH, f"--config.train.steps={steps}", devices=8, env=jax_env)
    outs = _train_2_processes(multi, steps, jax_env, sigterm_after=2)
    stopped = metrics_lines(multi)[-1]["step"]
    assert 2 <= stopped < steps and checkpoint_steps(multi)[-1] == stopped
    assert f"SIGTERM received: saved step {stopped}" in outs[1]                      # the preempted process
    assert f"SIGTERM (on another process) received: saved step {stopped}" in outs[0]  # and its peer, same step
    outs = _train_2_processes(multi, steps, jax_env)          # both processes restore that step and go on
    a, b = load_state(multi), load_state(single)
    assert_same_state(a, b, atol=1e-5, view=_without_key_bias)
    # The key bias cannot match: its gradient is rounding noise (see `_without_key_bias`), and Adam turns any
    # gradient into a step of at most about lr, so the two runs' key biases (and their EMAs) differ by at most
    # 2 * lr per step; the Adam moments of that noise stay below 1e-5 like the rest of the state.
    assert_same_state(a, b, atol=2 * LR * steps, view=_key_bias_only)
    assert [m["step"] for m in metrics_lines(multi)] == list(range(1, steps + 1))   # logged once, by process 0
    data_states = sorted(os.listdir(multi / "checkpoints" / str(checkpoint_steps(multi)[-1]) / "data"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_states)   # each process's iterator
    report = json.loads((multi / "report.json").read_text())
    assert report["step"] == steps and os.path.isfile(report["samples_png"])     # the report, by process 0
    assert json.loads(outs[1].strip().splitlines()[-1])["step"] == steps
