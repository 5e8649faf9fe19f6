"""The GPU check's CPU dry run (`benchmarks/gpu_check.sh --dry-run`: the same script, tiny shapes, JAX and PyTorch on
the CPU): it ends in time and its summary holds every section, each with the outcome of its part."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(out / "summary.md") as f:
        return out, proc.stdout, f.read()


@pytest.mark.slow
def test_summary_holds_every_section_and_each_part_passed(dry_run):
    from benchmarks import gpu_check
    out, stdout, summary = dry_run
    assert summary.startswith("## GPU check (dry run on the CPU, tiny shapes)")
    for section in gpu_check.SECTIONS:
        assert f"### {section}\n\nStatus: ok (" in summary, (section, stdout)
    assert "jax backend: cpu" in summary and "Install of the wheels" in summary
    assert "passed" in summary.split("### Parity tests")[1].split("###")[0]
    models = [json.loads(line) for line in (out / "models.jsonl").read_text().splitlines()]
    assert [m["config"] for m in models] == [name for name, _ in gpu_check.DRY_MODELS]
    assert all(m["status"] == "ok" and m["step_ms"] > 0 for m in models), models
    assert models[0]["sampler"].startswith("generate") and models[0]["sample_finite"]
    brain = json.loads((out / "brain3d.json").read_text())
    assert brain["status"] == "ok" and brain["patch"] == 16 and brain["remat"] == ["res", "attn"]
    assert 0 < brain["xla_peak_gb"] < brain["goal_gb"] and "meets the < 16 GB goal" in summary
    assert "| medsegdiff_tiny | torch |" in summary and "| medsegdiff_tiny | jax |" in summary


def test_summary_names_a_failed_or_missing_section(tmp_path):
    """A section that failed shows its record; one that never ran reads "not run"; the summary still has all."""
    from benchmarks import gpu_check
    (tmp_path / "status").mkdir()
    (tmp_path / "status" / "Parity_tests.txt").write_text("FAILED (exit 1, 12 s; last line: 1 failed)\n")
    (tmp_path / "status" / "Benchmark_against_PyTorch.txt").write_text("TIMEOUT after 150 s\n")
    text = gpu_check.summary(str(tmp_path))
    assert all(f"### {s}" in text for s in gpu_check.SECTIONS)
    assert "### Parity tests\n\nStatus: FAILED (exit 1" in text
    assert "### Benchmark against PyTorch\n\nStatus: TIMEOUT after 150 s" in text
    assert "### Environment\n\nStatus: not run" in text and "(did not run)" in text
