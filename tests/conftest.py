"""Shared test helpers: tiny configs and a subprocess runner for multi-device / CLI tests."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The suite is compile-bound, and jaxdiff's XLA:CPU defaults (YNNPACK fusions, see jaxdiff/__init__.py) trade
# compile time for step time: tests (and the processes they start) run without them, except
# tests/test_xla_cpu_defaults.py, which checks that they leave the numbers unchanged.
os.environ.setdefault("JAXDIFF_XLA_CPU_DEFAULTS", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Training, sample and evaluate turn on JAX's persistent compilation cache (`jaxdiff.platform.setup`): in
# the tests (and the processes they start) it lives in pytest's cache folder instead of the user's ~/.cache, so a
# suite run reuses the programs that earlier runs of the same tiny models compiled, and leaves the home folder alone.
os.environ.setdefault("JAXDIFF_COMPILATION_CACHE", os.path.join(REPO, ".pytest_cache", "d", "jaxdiff_xla"))

# The longest modules (minutes each on a 2-core machine, from `pytest --durations`) are collected first, so that
# `-n 2 --dist loadscope` starts them at once and the short modules fill the other worker, instead of one worker
# running the last long module alone at the end. CI runs the `long` tests too (`-m "not long"` leaves them out of a
# quick local run).
LONG_MODULES = ("test_multihost.py", "test_cascade.py", "test_resilience.py", "test_benchmark_smoke.py",
                "test_sampling_devices.py", "test_loop.py", "test_tasks.py", "test_regions_training.py",
                "test_brain3d.py", "test_xla_cpu_defaults.py", "test_predict.py", "test_seg_eval3d.py",
                "test_parity.py", "test_export.py", "test_gpu_check.py", "test_gcs.py", "test_dpm_solver.py",
                "test_import.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))  # stable within a module


def run_python(args, devices: int | None = None, timeout: int = 600, cwd: str | None = None,
               env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python args...` in a fresh process (optionally with N virtual CPU devices); capture output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or REPO, env=env)


@pytest.fixture
def repo():
    return REPO
