"""Launchers in launch/: dry runs print the right commands; fake gcloud / python check the control flow.

No network and no gcloud, SLURM or TPU needed: `gcloud` and the training `python` are replaced by small
scripts that record their arguments.
"""
from __future__ import annotations

import os
import stat
import subprocess
import shutil
import signal
import time

import pytest

from conftest import REPO

LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ["tpu_vm.sh", "slurm_gpu.sbatch", "local_multiprocess.sh"]
V5E_SPOT = ["--name", "jaxdiff-v5e", "--zone", "us-west4-a", "--accelerator-type", "v5litepod-16", "--spot",
            "--config", "configs/quickstart.py", "--workdir", "gs://bucket/runs/quickstart",
            "--extra", "--config.train.steps=2000"]
AT = ["--name", "jaxdiff-v5e", "--zone", "us-west4-a"]


def _bash(script, *args, env=None, cwd=REPO, timeout=60):
    """Run `bash launch/<script> args...`; extra environment variables in `env`."""
    return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


def _commands(stdout):
    """The `+ `-prefixed command lines of a dry run, without the prefix."""
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def _executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# The fake gcloud: logs its arguments; `describe` answers the next line of $STATES (the last one repeats), or
# READY / ACTIVE; `storage ls` lists three checkpoints; with SSH_FAIL=1 every ssh exits 255 (a dropped
# connection). With FAKE_HOME set, ssh runs its --command in bash there, as a worker would (HOME=FAKE_HOME;
# the install step is skipped and ~/venv/bin/python is the fake trainer), and delete kills the trainer and its
# wrapper and clears their files, as losing the VM would.
FAKE_GCLOUD = r"""#!/bin/bash
printf "%s\n" "$*" >> "$GCLOUD_LOG"
cmd=""
for a in "$@"; do [[ $a == --command=* ]] && cmd=${a#--command=}; done
case " $* " in
  *" describe "*)
    if [[ -n ${STATES:-} ]]; then
      head -n 1 "$STATES"
      if (( $(wc -l < "$STATES") > 1 )); then sed -i 1d "$STATES"; fi
    elif [[ $* == *queued-resources* ]]; then echo ACTIVE
    else echo READY; fi ;;
  *" storage ls "*) printf '%s\n' "${3}100/" "${3}2000/" "${3}300/" ;;
  *" delete "*)
    if [[ -n ${FAKE_HOME:-} && -f $FAKE_HOME/jaxdiff/train.pid ]]; then
      pid=$(cat "$FAKE_HOME/jaxdiff/train.pid")
      kill -9 "$(ps -o ppid= -p "$pid")" "$pid" 2>/dev/null
      rm -f "$FAKE_HOME/jaxdiff/train.pid" "$FAKE_HOME/jaxdiff/train.exit"
    fi ;;
  *" ssh "*)
    [[ ${SSH_FAIL:-0} == 1 ]] && exit 255
    [[ -z ${FAKE_HOME:-} || $cmd == *install.sh* ]] && exit 0
    cd "$FAKE_HOME" && HOME=$FAKE_HOME exec bash -c "$cmd" ;;
esac
exit 0
"""

# The fake trainer: logs its arguments, sleeps TRAIN_SLEEP s, exits TRAIN_RC; on SIGTERM it says what
# jaxdiff.train says after saving a checkpoint and exits 0.
FAKE_TRAINER = r"""#!/bin/bash
echo "$*" >> "$HOME/trainer_calls"
trap 'kill $! 2>/dev/null; echo "SIGTERM received: saved step 3 to ckpt; re-run to resume."; exit 0' TERM
sleep "${TRAIN_SLEEP:-0}" &
wait $!
exit "${TRAIN_RC:-0}"
"""


@pytest.fixture
def fake_gcloud(tmp_path):
    """Environment with the fake gcloud on PATH (commands only recorded), and its log file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "gcloud.log"
    log.write_text("")
    _executable(bindir / "gcloud", FAKE_GCLOUD)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "GCLOUD_LOG": str(log)}, log


@pytest.fixture
def worker(fake_gcloud, tmp_path):
    """The fake gcloud running ssh commands in a worker home (tmp_path/home) with a fake trainer.

    Yields (env, gcloud log, home); kills a trainer left running at the end.
    """
    env, log = fake_gcloud
    home = tmp_path / "home"
    (home / "jaxdiff").mkdir(parents=True)
    (home / "venv" / "bin").mkdir(parents=True)
    _executable(home / "venv" / "bin" / "python", FAKE_TRAINER)
    yield {**env, "FAKE_HOME": str(home)}, log, home
    pidfile = home / "jaxdiff" / "train.pid"
    if pidfile.exists() and pidfile.read_text().strip():
        pid = int(pidfile.read_text())
        ppid = subprocess.run(["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True, text=True).stdout
        for p, sig in ((pid, signal.SIGTERM), *([(int(ppid), signal.SIGKILL)] if ppid.strip() else [])):
            try:
                os.kill(p, sig)  # the trainer's TERM trap also ends its sleep
            except ProcessLookupError:
                pass


def _calls(log):
    """The gcloud calls as their first two words after `compute tpus`: 'tpu-vm ssh', 'queued-resources delete'."""
    return [" ".join(c.split()[2:4]) for c in log.read_text().splitlines()]


@pytest.mark.parametrize("script", SCRIPTS)
def test_syntax(script):
    r = subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (.ci/run installs it)")
def test_shellcheck():
    r = subprocess.run(["shellcheck", *(os.path.join(LAUNCH, s) for s in SCRIPTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_tpu_v5e_spot_dry_run():
    r = _bash("tpu_vm.sh", "run", *V5E_SPOT, "--follow", "--retry", "2", "--delete-on-success", "--dry-run")
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    create, wait, guard, copy, install, train, follow, state, poll, delete = cmds
    assert create.startswith("gcloud compute tpus queued-resources create jaxdiff-v5e --node-id=jaxdiff-v5e ")
    assert "--accelerator-type=v5litepod-16" in create and create.endswith(" --spot")
    assert "--runtime-version=v2-alpha-tpuv5-lite" in create and "--zone=us-west4-a" in create
    assert wait == state == ("gcloud compute tpus queued-resources describe jaxdiff-v5e --zone=us-west4-a "
                             "--format='value(state.state)'")
    assert " ssh jaxdiff-v5e " in guard and "already running" in guard
    assert copy.startswith(f"gcloud compute tpus tpu-vm scp --recurse {REPO} jaxdiff-v5e:") and "--worker=all" in copy
    assert " ssh jaxdiff-v5e " in install and "--worker=all" in install
    assert "uv venv --seed --python 3.11 ~/venv" in install
    assert 'pip install -U "jax[tpu]" -r requirements.txt -e ".[gcp]"' in install  # where pyproject has the extra
    assert 'pip install -U "jax[tpu]" -r requirements.txt -e . gcsfs' in install  # else gcsfs itself
    assert " ssh jaxdiff-v5e " in train and "--worker=all" in train
    assert "nohup setsid bash -c" in train and ">> train.log 2>&1 < /dev/null &" in train
    assert "python -m jaxdiff.train --config configs/quickstart.py" in train
    assert "--workdir gs://bucket/runs/quickstart --distributed --config.train.steps=2000" in train
    assert "--worker=0" in follow and "tail -n +1 -F jaxdiff/train.log" in follow
    assert "--worker=0" in poll and "train.exit" in poll
    assert delete == "gcloud compute tpus queued-resources delete jaxdiff-v5e --zone=us-west4-a --force --quiet"


def test_tpu_run_on_demand_git_repo_returns_without_delete():
    args = [a for a in V5E_SPOT if a != "--spot"]
    r = _bash("tpu_vm.sh", "run", *args, "--repo", "https://example.org/jaxdiff.git", "--dry-run")
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    assert not any(" delete " in c for c in cmds)
    assert cmds[0].startswith("gcloud compute tpus tpu-vm create jaxdiff-v5e ") and "--spot" not in cmds[0]
    assert "--version=v2-alpha-tpuv5-lite" in cmds[0]
    assert cmds[1] == "gcloud compute tpus tpu-vm describe jaxdiff-v5e --zone=us-west4-a --format='value(state)'"
    assert "git clone --depth 1 https://example.org/jaxdiff.git jaxdiff" in cmds[3]
    assert "nohup" in cmds[-1]  # the last command starts the trainer: nothing waits for it
    assert "tpu_vm.sh delete --name jaxdiff-v5e" in r.stderr  # tells how to delete the slice


@pytest.mark.parametrize("sub, drop, message", [("run", "--config", "missing --config"),
                                                ("start", "--workdir", "missing --workdir"),
                                                ("create", "--accelerator-type", "missing --accelerator-type"),
                                                ("status", "--zone", "missing --zone")])
def test_tpu_missing_option(sub, drop, message):
    i = V5E_SPOT.index(drop)
    r = _bash("tpu_vm.sh", sub, *V5E_SPOT[:i], *V5E_SPOT[i + 2:], "--dry-run")
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr


def test_tpu_bad_input_fails_before_create():
    args = list(V5E_SPOT)
    args[args.index("configs/quickstart.py")] = "configs/no_such.py"
    r = _bash("tpu_vm.sh", "run", *args, "--dry-run")
    assert r.returncode == 2 and "configs/no_such.py" in r.stderr and r.stdout == ""
    r = _bash("tpu_vm.sh", "launch", *V5E_SPOT, "--dry-run")
    assert r.returncode == 2 and "unknown subcommand launch" in r.stderr and r.stdout == ""
    r = _bash("tpu_vm.sh", "run", *V5E_SPOT, "--retry", "x", "--dry-run")
    assert r.returncode == 2 and "--retry" in r.stderr and r.stdout == ""


def test_tpu_start_is_detached_then_status_and_stop(worker):
    """start returns while the trainer runs on; status sees it; stop makes it save and exit, nothing deleted."""
    env, log, home = worker
    env = {**env, "TRAIN_SLEEP": "60"}
    t0 = time.monotonic()
    r = _bash("tpu_vm.sh", "start", *V5E_SPOT[:4], *V5E_SPOT[7:], env=env)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 10  # did not wait for the 60 s trainer
    assert "nohup setsid" in log.read_text().splitlines()[-1]
    pid = int((home / "jaxdiff" / "train.pid").read_text())
    assert _alive(pid)
    assert "--workdir gs://bucket/runs/quickstart --distributed" in (home / "trainer_calls").read_text()
    assert "start: jaxdiff.train" in (home / "jaxdiff" / "train.log").read_text()

    r = _bash("tpu_vm.sh", "start", *V5E_SPOT[:4], *V5E_SPOT[7:], env=env)  # a second trainer: refused
    assert r.returncode == 2 and "already running" in r.stderr
    r = _bash("tpu_vm.sh", "status", *AT, "--workdir", "gs://bucket/runs/quickstart", env=env)
    assert r.returncode == 0, r.stderr
    assert "jaxdiff-v5e: READY" in r.stdout and "trainer running" in r.stdout
    assert "latest checkpoint in gs://bucket/runs/quickstart: 2000" in r.stdout
    assert "storage ls gs://bucket/runs/quickstart/checkpoints/" in log.read_text()

    r = _bash("tpu_vm.sh", "stop", *AT, env=env)
    assert r.returncode == 0 and "sent SIGTERM" in r.stdout
    exitfile = home / "jaxdiff" / "train.exit"
    assert _wait_for(lambda: exitfile.exists() and exitfile.read_text().strip() == "stopped")
    assert not _alive(pid)
    r = _bash("tpu_vm.sh", "status", *AT, env=env)
    assert "trainer exit stopped" in r.stdout
    r = _bash("tpu_vm.sh", "logs", *AT, env=env)
    assert "SIGTERM received: saved step 3" in r.stdout and "end: stopped" in r.stdout
    assert "delete" not in log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_tpu_client_killed_never_deletes(worker, sig):
    """Killing the watching client (closed laptop, lost terminal, Ctrl-C) leaves the slice and the run alone."""
    env, log, home = worker
    proc = subprocess.Popen(["bash", os.path.join(LAUNCH, "tpu_vm.sh"), "run", *V5E_SPOT, "--follow", "--retry",
                             "2", "--delete-on-success", "--poll", "0.2"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **env, "TRAIN_SLEEP": "60"})
    pidfile = home / "jaxdiff" / "train.pid"
    assert _wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    assert _wait_for(lambda: "train.exit" in log.read_text())  # the client is watching
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + sig
    assert "nothing was deleted" in err and "attach --name jaxdiff-v5e" in err
    assert _alive(int(pidfile.read_text()))  # the run goes on
    time.sleep(0.5)  # a watcher left behind would poll, and might delete, now
    assert "delete" not in log.read_text()


def test_tpu_dropped_ssh_never_deletes(fake_gcloud):
    env, log = fake_gcloud
    r = _bash("tpu_vm.sh", "run", *V5E_SPOT, "--retry", "1", "--delete-on-success", "--poll", "0.1",
              env={**env, "SSH_FAIL": "1"})
    assert r.returncode == 2 and "could not start" in r.stderr
    assert _calls(log) == ["queued-resources create", "queued-resources describe", "tpu-vm ssh"]


def test_tpu_delete_only_when_asked(worker, tmp_path):
    env, log, home = worker
    args = list(V5E_SPOT)
    args[args.index("gs://bucket/runs/quickstart")] = "runs/q"  # worker-local: copied back before the delete
    run = ["run", *args, "--delete-on-success", "--poll", "0.1", "--repo", REPO]
    r = _bash("tpu_vm.sh", *run, env={**env, "TRAIN_RC": "7"}, cwd=tmp_path)  # failed: kept
    assert r.returncode == 1 and "training failed (exit status 7)" in r.stderr
    assert "delete" not in log.read_text()
    r = _bash("tpu_vm.sh", "run", *args, "--follow", "--poll", "0.1", "--repo", REPO, env=env, cwd=tmp_path)
    assert r.returncode == 0 and "delete" not in log.read_text()  # succeeded, but no --delete-on-success

    log.write_text("")
    r = _bash("tpu_vm.sh", *run, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert calls[-2] == ("compute tpus tpu-vm scp --recurse jaxdiff-v5e:jaxdiff/runs/q runs --zone=us-west4-a "
                         "--worker=0")
    assert calls[-1] == "compute tpus queued-resources delete jaxdiff-v5e --zone=us-west4-a --force --quiet"
    assert (tmp_path / "runs").is_dir()

    log.write_text("")
    r = _bash("tpu_vm.sh", "delete", *AT, env=env)
    assert r.returncode == 0
    assert log.read_text() == "compute tpus tpu-vm delete jaxdiff-v5e --zone=us-west4-a --quiet\n"


@pytest.mark.parametrize("queued, lost, ready", [(True, "SUSPENDED", "ACTIVE"), (False, "PREEMPTED", "READY")])
def test_tpu_preemption_retry_recreates_and_resumes(worker, tmp_path, queued, lost, ready):
    env, log, home = worker
    states = tmp_path / "states"
    states.write_text(f"{ready}\n{lost}\n{ready}\n")  # up; preempted at the first poll; up again after recreate
    args = V5E_SPOT if queued else [a for a in V5E_SPOT if a != "--spot"]
    r = _bash("tpu_vm.sh", "run", *args, "--retry", "1", "--delete-on-success", "--poll", "0.1",
              env={**env, "STATES": str(states), "TRAIN_SLEEP": "0.5"})
    assert r.returncode == 0, r.stderr
    assert f"was preempted (state {lost})" in r.stderr
    kind = "queued-resources" if queued else "tpu-vm"
    once = [f"{kind} create", f"{kind} describe", "tpu-vm ssh", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh"]
    calls = _calls(log)
    assert calls[:14] == [*once, f"{kind} describe", f"{kind} delete", *once]
    assert calls[-1] == f"{kind} delete" and calls.count(f"{kind} delete") == 2
    trainer = (home / "trainer_calls").read_text().splitlines()
    assert len(trainer) == 2 and trainer[0] == trainer[1]  # the same command: it resumes from the workdir
    assert "--workdir gs://bucket/runs/quickstart" in trainer[0]


def test_tpu_preemption_without_retry_stops(worker, tmp_path):
    env, log, home = worker
    states = tmp_path / "states"
    states.write_text("ACTIVE\nSUSPENDED\n")
    r = _bash("tpu_vm.sh", "run", *V5E_SPOT, "--follow", "--retry", "0", "--delete-on-success", "--poll", "0.1",
              env={**env, "STATES": str(states), "TRAIN_SLEEP": "60"})
    assert r.returncode == 3
    assert "was preempted (state SUSPENDED) and no retries are left" in r.stderr
    assert "delete" not in log.read_text() and log.read_text().count(" create ") == 1


def test_tpu_real_run_matches_dry_run(fake_gcloud, tmp_path):
    """The printed commands, pasted into bash, give gcloud the same arguments as a real run."""
    env, log = fake_gcloud
    args = list(V5E_SPOT)
    args[args.index("gs://bucket/runs/quickstart")] = "my runs/it's here"
    r = _bash("tpu_vm.sh", "run", *args, "--repo", REPO, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    real = log.read_text()
    log.write_text("")
    dry = _bash("tpu_vm.sh", "run", *args, "--repo", REPO, "--dry-run", cwd=tmp_path)
    pasted = subprocess.run(["bash", "-c", "\n".join(_commands(dry.stdout))], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, **env})
    assert pasted.returncode == 0, pasted.stderr
    assert log.read_text() == real
    assert "--workdir '\\''my runs/it'\\''" in real  # quoted for the worker's `bash -c`


def test_slurm_dry_run():
    r = _bash("slurm_gpu.sbatch", env={"DRY_RUN": "1", "CONFIG": "configs/quickstart.py", "WORKDIR": "/shared/q",
                                       "EXTRA": "--config.train.steps=5 --quiet", "SLURM_GPUS_ON_NODE": "4"})
    assert r.returncode == 0, r.stderr
    (cmd,) = _commands(r.stdout)
    assert cmd.startswith("JAX_LOCAL_DEVICE_IDS=0,1,2,3 srun ")
    assert ("python -m jaxdiff.train --config configs/quickstart.py --workdir /shared/q --distributed "
            "--config.train.steps=5 --quiet") in cmd
    header = open(os.path.join(LAUNCH, "slurm_gpu.sbatch")).read()
    for directive in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node=", "--time="):
        assert f"#SBATCH {directive}" in header


def test_slurm_missing_config():
    r = _bash("slurm_gpu.sbatch", env={"DRY_RUN": "1", "CONFIG": "", "WORKDIR": "/shared/q"})
    assert r.returncode == 2 and "CONFIG" in r.stderr and r.stdout == ""


def test_local_dry_run():
    r = _bash("local_multiprocess.sh", "--config", "configs/quickstart.py", "--workdir", "runs/mp", "--dry-run")
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    assert len(cmds) == 2
    for i, cmd in enumerate(cmds):
        assert f"JAX_PROCESS_ID={i} " in cmd
        assert "XLA_FLAGS=--xla_force_host_platform_device_count=2" in cmd
        assert "JAX_COORDINATOR_ADDRESS=127.0.0.1:12355 JAX_NUM_PROCESSES=2" in cmd
        assert "python -m jaxdiff.train --config configs/quickstart.py --workdir runs/mp --distributed" in cmd
        assert cmd.endswith(f"> runs/mp/logs/process_{i}.log 2>&1 &")


@pytest.fixture
def fake_python(tmp_path):
    """A `python` that logs its environment and arguments; process FAIL_ID exits 3, the others sleep SLEEP s."""
    return _executable(tmp_path / "python", '#!/bin/bash\n'
                       'echo "id=$JAX_PROCESS_ID of $JAX_NUM_PROCESSES at $JAX_COORDINATOR_ADDRESS flags=$XLA_FLAGS"\n'
                       'echo "args=$*"\n'
                       'if [[ $JAX_PROCESS_ID == "${FAIL_ID:-}" ]]; then exit 3; fi\n'
                       'exec sleep "${SLEEP:-0}"\n')


def test_local_runs_all_processes(fake_python, tmp_path):
    work = tmp_path / "w"
    r = _bash("local_multiprocess.sh", "--config", "configs/quickstart.py", "--workdir", str(work),
              "--num-processes", "3", "--extra", "--config.train.steps=3", env={"PYTHON": fake_python})
    assert r.returncode == 0, r.stderr
    for i in range(3):
        log = (work / "logs" / f"process_{i}.log").read_text()
        assert f"id={i} of 3 at 127.0.0.1:12355 flags=--xla_force_host_platform_device_count=2" in log
        assert f"--workdir {work} --distributed --config.train.steps=3" in log


def test_local_failure_stops_the_others(fake_python, tmp_path):
    start = time.monotonic()
    r = _bash("local_multiprocess.sh", "--config", "configs/quickstart.py", "--workdir", str(tmp_path / "w"),
              env={"PYTHON": fake_python, "FAIL_ID": "1", "SLEEP": "120"})
    assert r.returncode == 1
    assert time.monotonic() - start < 30  # process 0 was stopped, not waited for
    assert "process 1 failed" in r.stderr and "process 0 failed" not in r.stderr


FAKE_SRUN = r"""#!/bin/bash
echo "srun $*"
trap 'kill $! 2>/dev/null; echo "SIGTERM received: saved step 3 to ckpt; re-run to resume."; exit 0' TERM
sleep "${TRAIN_SLEEP:-0}" &
wait $!
"""


@pytest.mark.parametrize("signalled", [True, False])
def test_slurm_forwards_the_signal_and_requeues(tmp_path, signalled):
    """SIGTERM to the batch script (--signal=B:TERM@120, preemption) reaches the trainer, then the job requeues."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _executable(bindir / "srun", FAKE_SRUN)
    _executable(bindir / "scontrol", f'#!/bin/bash\necho "scontrol $*" >> {tmp_path}/scontrol.log\n')
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "CONFIG": "configs/quickstart.py",
           "WORKDIR": "/shared/q", "SLURM_GPUS_ON_NODE": "2", "SLURM_JOB_ID": "42",
           "TRAIN_SLEEP": "60" if signalled else "0"}
    proc = subprocess.Popen(["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch")], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if signalled:
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "srun --kill-on-bad-exit=1 python -m jaxdiff.train --config configs/quickstart.py" in out
    requeue = tmp_path / "scontrol.log"
    if signalled:
        assert "SIGTERM received: saved step 3" in out  # the trainer got the signal
        assert requeue.read_text() == "scontrol requeue 42\n"
    else:
        assert not requeue.exists()
    header = open(os.path.join(LAUNCH, "slurm_gpu.sbatch")).read()
    assert "#SBATCH --requeue\n" in header and "#SBATCH --signal=B:TERM@120\n" in header
