"""The platform boundary: importing jaxdiff (every package and command-line module, without running a command)
changes no environment variable, starts no process and no JAX backend; the training package imports no task; a
command a task cannot do fails at config time in one line."""
from __future__ import annotations

import json
import os
import pkgutil

import pytest

from conftest import REPO, run_python

# Imports every jaxdiff module with exec/fork/spawn recorded, and compares the environment with the one after
# `import jax` (JAX itself sets TF_CPP_MIN_LOG_LEVEL / TPU_SKIP_MDS_QUERY on import).
IMPORT_ALL = r"""
import importlib, json, os, subprocess, sys
import jax
calls = []
def record(name):
    def fail(*args, **kwargs):
        calls.append(name)
        raise RuntimeError(f"{name} called while importing jaxdiff")
    return fail
for name in ("execv", "execve", "execvp", "execvpe", "fork", "posix_spawn", "posix_spawnp", "system"):
    if hasattr(os, name):
        setattr(os, name, record(name))
subprocess.Popen.__init__ = record("subprocess.Popen")
before, pid, argv = dict(os.environ), os.getpid(), list(sys.argv)
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        failed[name] = repr(e)
from jax._src import xla_bridge
after = dict(os.environ)
print(json.dumps({"changed": sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)),
                  "calls": calls, "same_process": os.getpid() == pid and sys.argv == argv, "failed": failed,
                  "backends": xla_bridge.backends_are_initialized()}))
"""


def _modules() -> list[str]:
    """Every jaxdiff module, command-line modules included (not `__main__` ones, which run a command)."""
    import jaxdiff
    names = ["jaxdiff"]
    for info in pkgutil.walk_packages(jaxdiff.__path__, "jaxdiff."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def test_import_jaxdiff_changes_no_environment_and_starts_no_process():
    modules = _modules()
    assert {"jaxdiff.platform", "jaxdiff.cli.train", "jaxdiff.train", "jaxdiff.experiment"} <= set(modules)
    # the CPU defaults switched on, as for a user: importing must still not apply them
    proc = run_python(["-c", IMPORT_ALL, *modules], env_extra={"JAXDIFF_XLA_CPU_DEFAULTS": "1", "XLA_FLAGS": "",
                                                               "GLIBC_TUNABLES": ""}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {k: v for k, v in out["failed"].items() if "No module named" not in v}  # optional extras (torch, ...)
    assert failed == {}
    assert out["changed"] == [] and out["calls"] == [] and out["same_process"] and out["backends"] is False, out


def test_training_imports_no_task_model_or_command_line_module():
    script = ("import sys\nimport jaxdiff.training.loop, jaxdiff.training.checkpoint, jaxdiff.training.step, "
              "jaxdiff.training.sharding, jaxdiff.training.state\n"
              "print(' '.join(sorted(m for m in sys.modules if m.startswith('jaxdiff.'))))")
    proc = run_python(["-c", script], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = proc.stdout.split()
    assert "jaxdiff.training.loop" in loaded
    assert not [m for m in loaded if m.split(".")[1] in ("tasks", "models", "cli", "experiment", "data")], loaded


def test_library_modules_import_no_command_line_module():
    """Library code does not import from jaxdiff.cli (the thin `jaxdiff/<command>.py` modules are the CLI's)."""
    commands = {"train", "sample", "evaluate", "predict", "summary", "prepare_data", "sam", "cascade"}
    offenders = []
    for root, _, names in os.walk(os.path.join(REPO, "jaxdiff")):
        rel = os.path.relpath(root, REPO).replace(os.sep, ".")
        if rel.startswith("jaxdiff.cli"):
            continue
        for name in names:
            if name.endswith(".py") and not (rel == "jaxdiff" and name[:-3] in commands):
                text = open(os.path.join(root, name)).read()
                if "jaxdiff.cli" in text.replace("`jaxdiff.cli", "") or "from jaxdiff import cli" in text:
                    offenders.append(f"{rel}.{name[:-3]}")
    assert offenders == []


def test_a_command_the_task_cannot_do_is_a_one_line_error_at_config_time():
    from jaxdiff import config as config_lib, tasks
    from jaxdiff.errors import InputError
    config, _ = config_lib.parse(["evaluate", "--config", os.path.join(REPO, "configs/quickstart.py")])
    assert config.task == "generation"
    with pytest.raises(InputError) as err:
        tasks.require(config, "evaluate")
    assert str(err.value) == ("config key task: task 'generation' cannot be evaluated; the tasks that can: "
                              "classification, segmentation, segmentation_diffusion")
    tasks.require(config, "sample")
    assert tasks.supports("segmentation", "predict") and not tasks.supports("segmentation", "sample")


def test_old_names_forward_to_the_platform_with_a_deprecation_warning():
    import jaxdiff
    from jaxdiff import platform
    with pytest.warns(DeprecationWarning, match="jaxdiff.platform.set_cpu_fusion"):
        assert jaxdiff.set_cpu_fusion is platform.set_cpu_fusion
    with pytest.warns(DeprecationWarning):
        assert jaxdiff.CPU_XLA_FLAGS == platform.CPU_XLA_FLAGS
    with pytest.raises(AttributeError):
        jaxdiff.no_such_name
