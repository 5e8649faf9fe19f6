"""Launchers in launch/: dry runs print the right commands; fake gcloud / python check the control flow.

No network and no gcloud, SLURM or TPU needed: `gcloud` and the training `python` are replaced by small
scripts that record their arguments.
"""
from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from conftest import REPO

LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ["tpu_vm.sh", "slurm_gpu.sbatch", "local_multiprocess.sh"]
V5E_SPOT = ["--name", "jaxdiff-v5e", "--zone", "us-west4-a", "--accelerator-type", "v5litepod-16", "--spot",
            "--config", "configs/quickstart.py", "--workdir", "gs://bucket/runs/quickstart",
            "--extra", "--config.train.steps=2000"]


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


@pytest.fixture
def fake_gcloud(tmp_path):
    """A `gcloud` on PATH that appends its arguments to a log and fails the training step if FAIL_TRAIN=1."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "gcloud.log"
    _executable(bindir / "gcloud", '#!/bin/bash\nprintf "%s\\n" "$*" >> "$GCLOUD_LOG"\n'
                'if [[ $* == *jaxdiff.train* && ${FAIL_TRAIN:-0} == 1 ]]; then exit 7; fi\n')
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "GCLOUD_LOG": str(log)}, log


@pytest.mark.parametrize("script", SCRIPTS)
def test_syntax(script):
    r = subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_tpu_v5e_spot_dry_run():
    r = _bash("tpu_vm.sh", *V5E_SPOT, "--dry-run")
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    create, copy, install, train, delete = cmds  # gs:// work directory: nothing to fetch
    assert create.startswith("gcloud compute tpus tpu-vm create jaxdiff-v5e ")
    assert "--accelerator-type=v5litepod-16" in create and "--spot" in create
    assert "--version=v2-alpha-tpuv5-lite" in create and "--zone=us-west4-a" in create
    assert copy.startswith("gcloud compute tpus tpu-vm scp --recurse ") and "--worker=all" in copy
    assert " ssh jaxdiff-v5e " in install and "--worker=all" in install
    assert 'pip install -U "jax[tpu]" -r requirements.txt -e .' in install
    assert " ssh jaxdiff-v5e " in train and "--worker=all" in train
    assert "python -m jaxdiff.train --config configs/quickstart.py" in train
    assert "--workdir gs://bucket/runs/quickstart --distributed --config.train.steps=2000" in train
    assert delete == "gcloud compute tpus tpu-vm delete jaxdiff-v5e --zone=us-west4-a --quiet"


def test_tpu_keep_on_demand_git_repo_local_workdir():
    args = [a for a in V5E_SPOT if a != "--spot"]
    args[args.index("gs://bucket/runs/quickstart")] = "runs/quickstart"
    r = _bash("tpu_vm.sh", *args, "--on-demand", "--keep", "--repo", "https://example.org/jaxdiff.git",
              "--dry-run")
    assert r.returncode == 0, r.stderr
    cmds = _commands(r.stdout)
    assert not any(" delete " in c for c in cmds)
    assert "--spot" not in cmds[0]
    assert "git clone --depth 1 https://example.org/jaxdiff.git jaxdiff" in cmds[1]
    assert cmds[-1] == ("gcloud compute tpus tpu-vm scp --recurse jaxdiff-v5e:jaxdiff/runs/quickstart runs "
                        "--zone=us-west4-a --worker=0")
    assert "delete" in r.stderr  # tells how to delete the kept VM


@pytest.mark.parametrize("drop, message", [("--config", "missing --config"), ("--zone", "missing --zone")])
def test_tpu_missing_option(drop, message):
    i = V5E_SPOT.index(drop)
    r = _bash("tpu_vm.sh", *V5E_SPOT[:i], *V5E_SPOT[i + 2:], "--dry-run")
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr


def test_tpu_unknown_config_fails_before_create():
    args = list(V5E_SPOT)
    args[args.index("configs/quickstart.py")] = "configs/no_such.py"
    r = _bash("tpu_vm.sh", *args, "--dry-run")
    assert r.returncode == 2 and "configs/no_such.py" in r.stderr and r.stdout == ""


def test_tpu_failed_training_still_deletes(fake_gcloud):
    env, log = fake_gcloud
    r = _bash("tpu_vm.sh", *V5E_SPOT, env={**env, "FAIL_TRAIN": "1"})
    assert r.returncode == 7
    calls = log.read_text().splitlines()
    assert [c.split()[3] for c in calls] == ["create", "scp", "ssh", "ssh", "delete"]
    assert "jaxdiff.train" in calls[3]


def test_tpu_real_run_matches_dry_run(fake_gcloud, tmp_path):
    """The printed commands, pasted into bash, give gcloud the same arguments as a real run."""
    env, log = fake_gcloud
    args = list(V5E_SPOT)
    args[args.index("gs://bucket/runs/quickstart")] = "my runs/it's here"
    r = _bash("tpu_vm.sh", *args, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    real = log.read_text()
    assert (tmp_path / "my runs").is_dir()  # the fetch step made the local parent directory
    log.write_text("")
    dry = _bash("tpu_vm.sh", *args, "--dry-run", cwd=tmp_path)
    pasted = subprocess.run(["bash", "-c", "\n".join(_commands(dry.stdout))], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, **env})
    assert pasted.returncode == 0, pasted.stderr
    assert log.read_text() == real
    assert "--workdir 'my runs/it'\\''s here'" in real  # quoted once more for the remote shell


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
