"""Smoke run of the side-by-side benchmark, `python -m benchmarks.run --quick --out DIR` (tiny sizes; the numbers
are never asserted against thresholds): one row per model and framework with finite positive numbers, in the
printed table, the markdown file and the CSV, and both frameworks computing the same function. The external
baselines (MONAI, diffusers; unet2d only) give finite rows when installed and an "n/a (not installed ...)" row
otherwise."""
from __future__ import annotations

import csv
import glob
import importlib.util
import itertools
import math
import re

import pytest

pytest.importorskip("torch")

from conftest import run_python  # noqa: E402

# Two cases keep the smoke run short in CI: the generation UNet (with the external baselines) and the v-prediction
# MedSegDiff; the other cases run the same code paths (their parity is in tests/test_parity.py).
MODELS = ("unet2d", "medsegdiff_tiny")
FRAMEWORKS = ("jax", "torch")
DIFFUSION = {"unet2d", "medsegdiff_tiny"}
BASELINES = ("monai", "diffusers")  # run for unet2d only
INSTALLED = {b for b in BASELINES if importlib.util.find_spec(b) is not None}
NOT_INSTALLED = "not installed: pip install -r requirements-bench.txt"
EXPECTED = sorted([*itertools.product(MODELS, FRAMEWORKS), *(("unet2d", b) for b in BASELINES)])


def positive(text: str) -> float:
    value = float(text)
    assert math.isfinite(value) and value > 0, text
    return value


def table_rows(markdown: str) -> dict:
    """{(model, framework): cells} of the results table (its header and separator skipped)."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| ") and not ln.startswith("| model ")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return {(c[0], c[1]): c[2:] for c in cells}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = run_python(["-m", "benchmarks.run", "--quick", "--cases", *MODELS, "--out", str(out)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [csv_path] = glob.glob(str(out / "*-quick.csv"))
    [md_path] = glob.glob(str(out / "*-quick.md"))
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    with open(md_path) as f:
        markdown = f.read()
    return proc.stdout, markdown, rows


@pytest.mark.slow
def test_csv_has_one_finite_row_per_model_and_framework(quick_run):
    _, _, rows = quick_run
    assert sorted((r["model"], r["framework"]) for r in rows) == EXPECTED
    for r in rows:
        if r["framework"] in BASELINES and r["framework"] not in INSTALLED:
            assert r["status"] == NOT_INSTALLED and r["train_step_ms"] == "" and r["params"] == "", r
            continue
        assert r["status"] == "ok", r
        positive(r["params"])
        steps_per_s, step_ms = positive(r["train_steps_per_s"]), positive(r["train_step_ms"])
        assert steps_per_s * step_ms == pytest.approx(1000.0, rel=1e-3)
        for key in ("first_step_s", "peak_memory_mb", "train_speedup_vs_eager"):
            positive(r[key])
        if r["model"] in DIFFUSION:
            positive(r["ddim_latency_s"])
            assert r["ddim_steps"] == "5" and r["sample_batch"] == "2"
        else:
            assert r["ddim_latency_s"] == ""
    eager = [r for r in rows if r["framework"] == "torch"]
    assert all(float(r["train_speedup_vs_eager"]) == 1.0 for r in eager)


@pytest.mark.slow
def test_printed_table_matches_the_markdown_file(quick_run):
    stdout, markdown, rows = quick_run
    assert markdown.strip() in stdout
    table = table_rows(markdown)
    assert sorted(table) == EXPECTED
    assert "DDIM-5 latency s (batch 2)" in markdown
    for (model, framework), cells in table.items():
        if framework in BASELINES and framework not in INSTALLED:
            assert cells[0] == f"n/a ({NOT_INSTALLED})"
            continue
        steps_per_s, step_ms, first_s, ddim_s, peak_mb = cells[:5]
        for value in (steps_per_s, step_ms, first_s, peak_mb) + ((ddim_s,) if model in DIFFUSION else ()):
            positive(value)
    for needle in ("command: `python -m benchmarks.run --quick", "jax 0.", "torch 2.", "XLA_FLAGS", "date:"):
        assert needle in markdown
    models_line = next(ln for ln in markdown.splitlines() if ln.startswith("- unet2d: diffusion UNet"))
    for name, cls in (("monai", "DiffusionModelUNet"), ("diffusers", "UNet2DModel")):
        assert (re.search(rf"{cls} [0-9,]+", models_line) is not None) == (name in INSTALLED), models_line


@pytest.mark.slow
def test_both_frameworks_compute_the_same_function(quick_run):
    """The ported weights give the same eval forward pass, and the same DDIM samples from the same start noise."""
    _, markdown, _ = quick_run
    parity = dict(re.findall(r"- (\w+): eval forward pass, .* = ([0-9.e+-]+)", markdown))
    assert sorted(parity) == sorted(MODELS)
    assert all(float(v) < 1e-4 for v in parity.values()), parity
    samples = dict(re.findall(r"- (\w+): DDIM samples, max \|jax - torch\| = ([0-9.e+-]+)", markdown))
    assert sorted(samples) == sorted(DIFFUSION)
    assert all(float(v) < 1e-3 for v in samples.values()), samples


def test_rounds_pool_timings_and_give_the_per_round_speedup_range():
    """`--rounds`: each framework's timings pooled over the rounds, the speedup's range from the per-round ratios
    (each round's worker against the eager worker next to it), first-step time and memory from round 1."""
    from benchmarks import run
    jax_rounds = [dict(train_step_s=[0.4, 0.5, 0.6], ddim_s=[2.0, 2.2], ddim_first_s=9.0, first_step_s=16.0, peak_memory_mb=236.0),
                  dict(train_step_s=[0.8, 0.9, 1.0], ddim_s=[4.0, 4.4], ddim_first_s=4.0, first_step_s=3.0, peak_memory_mb=1.0)]
    torch_rounds = [dict(train_step_s=[0.5] * 3, ddim_s=[3.0] * 2, ddim_first_s=3.0, first_step_s=0.6, peak_memory_mb=300.0),
                    dict(train_step_s=[0.8] * 3, ddim_s=[4.4] * 2, ddim_first_s=4.4, first_step_s=0.5, peak_memory_mb=2.0)]
    ours, eager = run.merge_rounds(jax_rounds), run.merge_rounds(torch_rounds)
    assert ours["train_step_s"] == [0.4, 0.5, 0.6, 0.8, 0.9, 1.0] and ours["rounds_train_step_s"] == [0.5, 0.9]
    assert ours["first_step_s"] == 16.0 and ours["peak_memory_mb"] == 236.0
    extra = dict(params=1, memory_method="m", sampled_peak_mb=1.0, rss_delta_mb=1.0, threads="t")
    case = run.CASE_BY_NAME["unet2d"]
    row = run._row(case, "jax", dict(ours, **extra), eager, dict(batch=8, image_size=64, params=1), run.Sizes.of(False, None))
    assert row["train_step_ms"] == pytest.approx(700.0)  # median of the pooled timings
    assert row["train_speedup_vs_eager"] == pytest.approx((0.5 / 0.5 + 0.8 / 0.9) / 2)  # median per-round ratio
    assert (row["train_speedup_min"], row["train_speedup_max"]) == pytest.approx((0.8 / 0.9, 0.5 / 0.5))
    assert (row["ddim_speedup_min"], row["ddim_speedup_max"]) == pytest.approx((4.4 / 4.2, 3.0 / 2.1))
    cells = table_rows(run.markdown_table([row], run.Sizes.of(False, None)))[("unet2d", "jax")]
    assert cells[-1] == "0.944x (0.889-1) / 1.24x (1.05-1.43)"
    eager.update(extra)  # run_all passes torch eager's own result as both
    eager_row = run._row(case, "torch", eager, eager, dict(batch=8, image_size=64, params=1), run.Sizes.of(False, None))
    assert eager_row["train_speedup_vs_eager"] == 1.0 and "train_speedup_min" not in eager_row
    single = run._row(case, "jax", dict(jax_rounds[0], **extra), torch_rounds[0], dict(batch=8, image_size=64,
                      params=1), run.Sizes.of(False, None))
    assert "train_speedup_min" not in single  # one round: no range
    assert run.merge_rounds([jax_rounds[0], {"error": "timeout after 600 s"}]) == {"error": "timeout after 600 s"}
    with pytest.raises(SystemExit):
        run.parse_args(["--rounds", "0"])
