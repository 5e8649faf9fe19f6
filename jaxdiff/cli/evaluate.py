"""Evaluate the latest checkpoint of a work directory on held-out data, or score a folder of predicted masks.

    python -m jaxdiff.evaluate --workdir DIR [--split test] [--num 0] [--steps 0] [--seed 0] [--cpu_devices 0]
    python -m jaxdiff.evaluate --input PRED_DIR --truth TRUTH_DIR [--output OUT_DIR]

With --workdir: scores segmentation and classification runs. Segmentation (the TransUNet-style segmenter, 512 U-Net,
MedSegDiff) is scored as BraTS scores (`jaxdiff.tasks.seg_eval`): every whole case of the split, segmented as
`jaxdiff.predict`
segments a scan, per case in 3D per region (WT / TC / ET for a run trained on BraTS regions, else WT or one
foreground), Dice, IoU, sensitivity, specificity, HD95 and ASSD in mm; `--num N` (or `eval.num_cases`) scores N
cases chosen evenly in the split's case order, and says so. Prints a short table (the split and its number of
cases, headline metrics, figure paths; `--json`: the JSON object instead) and writes DIR/eval_<split>/metrics.json,
per_case.csv (one row per case and region), evaluation.json (mean, std, median, quartiles per region and metric;
the empty-case conventions) and overlays.png. A run of a task without an evaluation (generation,
super-resolution, promptable segmentation) is refused in one `error:` line, before anything is restored.
Diffusion segmentation (MedSegDiff) samples its ensembles split over the devices: on a CPU one XLA device per core
unless --cpu_devices says otherwise (`jaxdiff.platform.set_cpu_devices`).

With --input and --truth: scores every predicted NIfTI label mask of PRED_DIR against the truth of the same case in
TRUTH_DIR (`jaxdiff.scoring.score_folders`: `<case>.nii.gz`, `<case>_seg.nii.gz` or the BraTS layout; same shape
and affine; regions WT / TC / ET when the truths carry BraTS labels 1 / 2 / 4, else one foreground), with no work
directory: any tool's outputs (jaxdiff's, nnU-Net's, MONAI's). Prints the table and writes per_case.csv and
summary.json to --output (default: `<PRED_DIR>_scores` beside PRED_DIR, so two prediction folders side by side do
not overwrite each other's scores).
"""
from __future__ import annotations

import os
import sys

from jaxdiff import cli, platform
from jaxdiff import config as config_lib
from jaxdiff.errors import InputError, cli_errors


def _flags(fv):
    from absl import flags
    flags.DEFINE_string("workdir", None, "Trained work directory (or --input and --truth).", flag_values=fv)
    flags.DEFINE_string("split", "test", "Data split: val or test.", flag_values=fv)
    flags.DEFINE_integer("num", 0, "Segmentation: number of whole cases, evenly spaced in the split's case order "
                         "(0: eval.num_cases, else every case); classification: number of examples (0: "
                         "eval.num_examples or all).", flag_values=fv)
    flags.DEFINE_string("input", None, "Folder of predicted NIfTI label masks to score against --truth (no "
                        "work directory).", flag_values=fv)
    flags.DEFINE_string("truth", None, "Folder of truth NIfTI label masks (with --input).", flag_values=fv)
    flags.DEFINE_string("output", None, "With --input: folder for per_case.csv and summary.json (default: "
                        "<input>_scores beside the input folder).", flag_values=fv)
    flags.DEFINE_integer("steps", 0, "Sampler steps for diffusion tasks (0: config).", flag_values=fv)
    cli.sampler_flag(fv)
    flags.DEFINE_integer("seed", 0, "Evaluation seed.", flag_values=fv)
    flags.DEFINE_integer("cpu_devices", None, "Diffusion segmentation: XLA CPU devices the sampled ensembles are "
                         "split over (0 or unset: one per core; 1: one device). CPU backend only.", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print the metrics as one JSON line (for scripts) instead of the table.",
                      flag_values=fv)


SAMPLING_TASKS = ("segmentation_diffusion",)  # evaluations that run a sampler (split over the devices)


def check_task(workdir: str, task: str | None) -> None:
    """InputError (one line saying what to run instead) when `task` (the run's, from its config.json) has no
    evaluation; nothing is built. None or an unknown task passes (load_for_inference / tasks.build report it)."""
    from jaxdiff import tasks
    if task not in tasks.TASKS or tasks.supports(task, "evaluate"):
        return
    report = os.path.join(workdir, "report.json")
    if task == "promptable_segmentation":
        instead = f"its end-of-run scores on the val split are in {report}"
    else:
        instead = (f"draw samples with python -m jaxdiff.sample --workdir {workdir}; its end-of-run metrics are in "
                   f"{report}")
    raise InputError(f"{workdir} is a {task} run; evaluate has no evaluation for task {task}: {instead}")


def default_output(input_dir: str) -> str:
    """Where `--input DIR` writes its scores without --output: `<DIR>_scores` beside DIR."""
    return os.path.normpath(os.path.abspath(input_dir)) + "_scores"


def score_folders_main(fv) -> int:
    """`--input PRED --truth TRUTH [--output OUT]`: `scoring.score_folders`, the table printed."""
    if not fv.input or not fv.truth:
        raise InputError(f"--{'truth' if fv.input else 'input'}: --input and --truth go together (predicted masks "
                         "and their truths)")
    if fv.workdir:
        raise InputError("--workdir: not with --input / --truth (those score a folder of masks without a run)")
    from jaxdiff import reporting, scoring
    from jaxdiff.io import files
    out_dir = fv.output or default_output(fv.input)
    summary = scoring.score_folders(fv.input, fv.truth, out_dir)
    summary_path = os.path.join(out_dir, "summary.json")
    if fv.json:
        print(files.strict_json(summary))
    else:
        print(reporting.summary_table(summary))
        print(f"per-case values: {summary['per_case_csv']}")
        print(f"summary per region (mean, std, median, quartiles; conventions): {summary_path}")
    return 0


def main(argv=None) -> int:
    reexec = cli.own_argv(argv)
    argv = list(sys.argv if argv is None else argv)
    with cli_errors():
        _, fv = config_lib.parse(argv, _flags, require_config=False)
        if fv.input is not None or fv.truth is not None:
            return score_folders_main(fv)
        if not fv.workdir:
            raise InputError("--workdir: give a trained work directory, or --input PRED_DIR --truth TRUTH_DIR to "
                             "score a folder of predicted masks")
        from jaxdiff import experiment
        saved = experiment.saved_config(fv.workdir)  # None when unreadable: load_for_inference says why
        task_name = str(saved.get("task", "")) if saved is not None else None
        check_task(fv.workdir, task_name)
        sampling = task_name in SAMPLING_TASKS  # their ensembles split over CPU devices; other tasks keep one device
        platform.setup(saved, cpu_devices=cli.cpu_devices(fv.cpu_devices) if sampling else None, reexec=reexec)
        import jax
        from jaxdiff import data
        from jaxdiff.io import files
        config, task, state = experiment.load_for_inference(fv.workdir, cli.sampler_overrides(fv))
        source = data.get_source(config.data, fv.split)
        out_dir = os.path.join(fv.workdir, f"eval_{fv.split}")
        result = task.evaluate(state, source, out_dir, jax.random.PRNGKey(fv.seed), num=fv.num or None,
                               num_steps=fv.steps or None, split=fv.split)
        result = {"split": fv.split, "step": int(jax.device_get(state.step)), **result}
        metrics_path = files.write_text(os.path.join(out_dir, "metrics.json"), files.strict_json(result, indent=2))
        if fv.json:
            print(files.strict_json(result))
        else:
            from jaxdiff.reporting import format_report
            figures = {f"{os.path.splitext(n)[0]}_png": os.path.join(out_dir, n)
                       for n in files.listdir(out_dir) if n.endswith(".png")}  # local folder or URL
            print(format_report({**figures, **result}, f"evaluate {fv.workdir}", json_path=metrics_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
