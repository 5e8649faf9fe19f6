"""The command-line entry points as a new user meets them: `--help`, `summary --keys`, a work directory that
cannot be one, `sample` / `evaluate` on a run of a task they do not serve, and the end-of-run table
(`jaxdiff.reporting`). Entry points run in this process (`main([...])`), with the training loop and the
checkpoint restore replaced where a test must show they are never reached."""
from __future__ import annotations

import importlib
import json
import os

import numpy as np
import pytest

from jaxdiff import config as config_lib
from jaxdiff.reporting import format_report

from conftest import REPO

QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")
SEG_CONFIG = os.path.join(REPO, "configs", "transformer_unet_tiny.py")


def run_main(module: str, *args) -> int:
    """`python -m jaxdiff.<module> args...` in this process; its exit status (main's return or SystemExit)."""
    main = importlib.import_module(f"jaxdiff.{module}" + (".__main__" if module == "preprocess" else "")).main
    try:
        return main(list(args) if module == "preprocess" else [module, *args])
    except SystemExit as e:
        return 0 if e.code is None else e.code


ENTRY_FLAGS = {"train": ["--workdir", "--cpu_devices", "--json", "--quiet"],
               "sample": ["--workdir", "--num", "--steps", "--out", "--cascade"],
               "evaluate": ["--workdir", "--split", "--num", "--json"],
               "summary": ["--depth", "--flops", "--memory", "--keys"],
               "prepare_data": ["--out", "--quiet"],
               "preprocess": ["--input", "--output", "--kmeans-k"]}


@pytest.mark.parametrize("module", sorted(ENTRY_FLAGS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_entry_point_answers_help_with_usage_flags_and_defaults(module, flag, capsys):
    assert run_main(module, flag) == 0
    out = capsys.readouterr().out
    doc = importlib.import_module(f"jaxdiff.{module}" + (".__main__" if module == "preprocess" else "")).__doc__
    assert doc.splitlines()[0] in " ".join(out.split())
    for name in ENTRY_FLAGS[module]:
        assert name in out or name.replace("--", "--[no]") in out, (module, name)
    if module != "preprocess":  # argparse's own help
        assert "(default: 16)" in out if module == "sample" else "(default: " in out
        assert "python -m jaxdiff.summary --config" in out and "--keys" in out


def test_help_after_a_config_lists_its_keys_and_values(capsys):
    """`train --config X --help` (absl answered `Unknown command line flag 'help'`) prints the usage and X's keys,
    an override applied nowhere: help starts nothing."""
    assert run_main("train", "--config", SEG_CONFIG, "--config.train.steps=3", "--help") == 0
    out = capsys.readouterr().out
    assert "--workdir" in out and f"keys of {SEG_CONFIG}:" in out
    assert "  train.steps = 400" in out and "  data.slices = None" in out


def test_summary_keys_lists_values_overrides_and_the_keys_code_reads(capsys):
    assert run_main("summary", "--config", SEG_CONFIG, "--keys", "--config.data.slices=linspace_70_100_10",
                    "--config.eval.num_examples=5") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "data.slices = 'linspace_70_100_10'" in lines and "eval.num_examples = 5" in lines
    assert "data.skip_bad_cases = False" in lines and "train.steps = 400" in lines
    assert "model.in_channels = 1" in lines   # a model field the file leaves out, with the model's default
    assert "data.tumour_fraction" in lines    # read by the phantom source with its own default
    assert not any(line.startswith("params:") for line in lines)  # nothing built


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the training loop is reached."""
    from jaxdiff import experiment

    def fail(*args, **kwargs):
        raise AssertionError("the experiment was built or trained")

    monkeypatch.setattr(experiment, "run", fail)
    monkeypatch.setattr(experiment, "build", fail)


@pytest.mark.parametrize("case", ["file", "under_file", "read_only"])
def test_a_workdir_that_cannot_be_one_is_a_one_line_error_before_training(case, tmp_path, no_training, capsys,
                                                                          monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    workdir, named = {"file": (notes, "is a file, not a folder"),
                      "under_file": (notes / "run", f"{notes} is a file, not a folder"),
                      "read_only": (tmp_path / "ro" / "run", "is not writable")}[case]
    if case == "read_only":
        (tmp_path / "ro").mkdir(mode=0o555)
        if os.geteuid() == 0:  # root may write anywhere: this folder reads as read-only
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: str(p) != str(tmp_path / "ro") and real(p, mode))
    assert run_main("train", "--config", QUICKSTART, "--workdir", str(workdir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --workdir {workdir}: ") and named in err[0], err
    assert notes.read_text() == "my notes\n"


def _run_dir(tmp_path, config_path, *overrides):
    """A work directory holding only the config.json that `train` would write (no checkpoint)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    config, _ = config_lib.parse(["train", "--config", config_path, *overrides])
    (workdir / "config.json").write_text(config_lib.to_json(config))
    return str(workdir)


@pytest.fixture
def no_restore(monkeypatch):
    from jaxdiff import experiment

    def fail(*args, **kwargs):
        raise AssertionError("load_for_inference was called")

    monkeypatch.setattr(experiment, "load_for_inference", fail)


@pytest.mark.parametrize("config, module, expected", [
    ("transformer_unet_tiny", "sample", r"is a segmentation run \(task segmentation\); sample draws images from "
                                        r"generative models: score it with python -m jaxdiff.evaluate --workdir "),
    ("medsegdiff_tiny", "sample", r"segmentation run \(task segmentation_diffusion\).*jaxdiff.evaluate"),
    ("classifier_tiny", "sample", r"is a classification run \(task classification\).*jaxdiff.evaluate --workdir"),
    ("sam_vit_b", "sample", r"segmentation run \(task promptable_segmentation\).*report.json"),
    ("quickstart", "evaluate", r"is a generation run; evaluate has no evaluation for task generation: draw "
                               r"samples with python -m jaxdiff.sample --workdir "),
    ("cascade_sr1_tiny", "evaluate", r"super_resolution run.*python -m jaxdiff.sample"),
    ("sam_vit_b", "evaluate", r"promptable_segmentation run.*report.json"),
])
def test_sample_and_evaluate_refuse_runs_they_do_not_serve_in_one_line(config, module, expected, tmp_path,
                                                                      no_restore, capsys):
    """Read from config.json before anything is restored (sample on a segmentation run raised AttributeError
    after restoring the checkpoint)."""
    import re
    workdir = _run_dir(tmp_path, os.path.join(REPO, "configs", f"{config}.py"))
    assert run_main(module, "--workdir", workdir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {workdir} ") and re.search(expected, err[0]), err


SEG_REPORT = {"step": 400, "first_step_s": 12.345, "split": "val", "num_cases": 24, "scored_as": "whole cases in 3D",
              "regions": ["WT", "TC", "ET"], "dice_WT": 0.812345, "dice_WT_std": 0.1, "dice_TC": 0.70123,
              "dice_TC_std": 0.2, "dice_ET": 0.6, "dice_ET_std": 0.25, "hd95_mm_WT": 2.5, "hd95_mm_WT_std": 1.5,
              "hd95_mm_TC": 4.25, "hd95_mm_TC_std": 2.0, "hd95_mm_ET": 6.0, "hd95_mm_ET_std": 3.0,
              "hd95_mm_ET_undefined": 3, "iou_WT": 0.7, "sensitivity_WT": 0.9,
              "per_case_csv": "/w/samples/per_case.csv", "evaluation_json": "/w/samples/evaluation.json",
              "overlays_png": "/w/samples/overlays.png"}


def test_format_report_segmentation_names_split_cases_metrics_and_figures():
    """Segmentation: per-case 3D region metrics (mean +- std), the split and its number of whole cases."""
    text = format_report(SEG_REPORT, "train /w", json_path="/w/report.json")
    lines = text.splitlines()
    assert lines[0] == "train /w, step 400: scored on the val split (24 cases, whole cases in 3D)"
    assert "first step 12.35 s" in text
    rows = {line.split("  ")[1].strip(): line for line in lines if line.startswith("  ") and "  " in line[2:]}
    assert rows["Dice WT"].split()[-3:] == ["0.8123", "+-", "0.1"] and "0.7012" in rows["Dice TC"]
    assert "HD95 ET (mm)" in rows and "6 +- 3  (undefined in 3 cases" in rows["HD95 ET (mm)"]
    assert "IoU WT" not in rows                    # MAX_METRICS lines: Dice and HD95 of the three regions
    assert "/w/samples/overlays.png" in text and "/w/samples/per_case.csv" in text
    assert lines[-1] == "full report: /w/report.json" and len(lines) < 18


@pytest.mark.parametrize("report, header, metrics", [
    ({"step": 50, "accuracy": 0.9, "balanced_accuracy": 0.85, "f1": 0.8, "roc_auc": float("nan"),
      "num_examples": 40, "confusion_matrix": [[1, 2], [3, 4]], "split": "test"},
     "scored on the test split (40 examples)", {"accuracy": "0.9", "ROC AUC": "n/a"}),
    ({"step": 4, "pixel_mmd": 0.0123456, "samples_png": "/w/samples/samples_step000004.png"},
     "scored on held-out data", {"pixel MMD": "0.01235"}),
    ({"step": 2, "psnr_sr": 11.123, "psnr_bilinear": 36.94, "low_res_png": "/w/s/low_res.png",
      "sr_report": {"metrics": {"sr_ddpm": {"ssim": 0.05123}}, "num_images": 8,
                    "files": {"png": "/w/s/sr_comparison.png"}}, "split": "val"},
     "scored on the val split (8 images)", {"PSNR SR (dB)": "11.12", "SSIM SR": "0.05123"}),
])
def test_format_report_other_tasks(report, header, metrics):
    text = format_report(report, "run")
    assert header in text.splitlines()[0]
    for label, value in metrics.items():
        assert any(line.strip().startswith(label) and line.split()[-1] == value for line in text.splitlines()), text
    for value in report.values():
        if isinstance(value, str) and value.endswith(".png"):
            assert value in text


def test_format_report_of_a_stopped_run_is_one_line():
    text = format_report({"stopped_at": 120}, "train /w")
    assert text == "train /w: stopped at step 120, checkpoint saved; re-run the same command to resume."


def test_train_prints_the_table_and_json_only_with_the_flag(tmp_path, monkeypatch, capsys):
    """The end of `train`: a table (not the 1,300-character JSON line) unless --json."""
    from jaxdiff import experiment
    monkeypatch.setattr(experiment, "run", lambda config, workdir, quiet=False: dict(SEG_REPORT))
    workdir = tmp_path / "w"
    assert run_main("train", "--config", SEG_CONFIG, "--workdir", str(workdir), "--quiet") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"train {workdir}, step 400: scored on the val split (24 cases, whole cases in 3D)"
    assert f"full report: {workdir / 'report.json'}" in out and "{" not in out
    assert run_main("train", "--config", SEG_CONFIG, "--workdir", str(workdir), "--quiet", "--json") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["dice_WT"] == SEG_REPORT["dice_WT"]


def test_evaluate_prints_a_table_naming_the_split_and_writes_metrics_json(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace
    from jaxdiff import experiment
    workdir = _run_dir(tmp_path, SEG_CONFIG)
    config = config_lib.from_json_file(os.path.join(workdir, "config.json"))

    class Task:
        def evaluate(self, state, source, out_dir, rng, num=None, num_steps=None, split=None):
            from jaxdiff.io import files
            files.write_text(os.path.join(out_dir, "overlays.png"), "png")
            return {"dice": 0.5, "iou": 0.25, "num_cases": len(source)}

    monkeypatch.setattr(experiment, "load_for_inference",
                        lambda w, overrides=None: (config, Task(), SimpleNamespace(step=np.int32(7))))
    assert run_main("evaluate", "--workdir", workdir, "--split", "val") == 0
    out = capsys.readouterr().out.splitlines()
    saved = json.loads(open(os.path.join(workdir, "eval_val", "metrics.json")).read())
    assert saved["split"] == "val" and saved["step"] == 7 and saved["dice"] == 0.5
    assert out[0] == f"evaluate {workdir}, step 7: scored on the val split ({saved['num_cases']} cases)"
    assert os.path.join(workdir, "eval_val", "overlays.png") in "\n".join(out)
    assert out[-1] == f"full report: {os.path.join(workdir, 'eval_val', 'metrics.json')}"
