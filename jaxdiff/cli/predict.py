"""Segment (or classify) your own scans and images with a trained work directory.

    python -m jaxdiff.predict --workdir RUN --input PATH --output DIR [--batch_size 0] [--steps 0] [--ensemble 0]
                              [--seed 0] [--cpu_devices 0] [--noskip_empty] [--prompts FILE (SAM runs)]

Segmentation runs (tasks segmentation: the TransUNet-style segmenter, 512 U-Net; segmentation_diffusion: MedSegDiff):
  - PATH a NIfTI file, a folder of them, or a BraTS-layout folder `<PATH>/<case>/<case>_{t1,t1ce,t2,flair}.nii.gz`
    (a `_seg` file is ignored): each case is brought to RAS and to the training voxel spacing, its modalities
    matched by their `_<modality>` suffix to the run's `data.modality` (a file without one is accepted when the
    model takes one modality), every axial slice is predicted (but those where every modality is constant, outside
    the head: probability 0; --noskip_empty runs them too), and the mask goes back to the input's grid and
    orientation: DIR/<case>.nii.gz (uint8 labels, 1 = tumour; the input's affine and header). MedSegDiff also
    writes DIR/<case>_uncertainty.nii.gz (float32 per-voxel variance of its ensemble).
  - PATH an image (PNG/JPEG/TIFF) or a folder of them (LGG kaggle_3m patient folders or a mask folder's
    images/; `*_mask.*` files and masks/ are skipped): DIR/<name>_mask.png (0/255) on the image's own size
    (MedSegDiff: also DIR/<name>_uncertainty.png, the variance scaled by 4 to 0..255).
Classification runs: PATH an image or a folder of images: DIR/predictions.csv, one row per image (file,
predicted class, one probability column per class).
Segment Anything runs (task promptable_segmentation) take --prompts FILE, a CSV (with a header) or JSON (a list of
objects) with one prompt per row: `image` (a file name relative to PATH, or a path), and `box` "x0,y0,x1,y1"
and/or `points` "x,y;x,y" with optional `labels` "1,0" (1 object, 0 background; default 1), in pixels of the
image (as `python -m jaxdiff.sam` takes them; JSON may give lists of numbers). Each image is embedded once and
its prompts decoded (the single-mask output the run was fine-tuned with): DIR/<name>_mask.png (0/255, the image's
own size), or DIR/<name>_p<k>_mask.png (k = 0, 1, ...) for an image with several prompts, and DIR/scores.csv
(image, prompt, iou: the predicted IoU, mask). A malformed row (missing image, bad box/points/labels) is an
`error:` naming the file and row (rows counted from 1, the header not counted), exit 2, before anything is
restored; the progress bar is over images and the last line "wrote N masks to DIR, M failed".

Each case has a progress bar over its slices. A file that cannot be used is reported in one `error:` line naming
it and the other cases are still written; the last line says "wrote N cases to DIR, M failed" and the exit status
is 1 when some failed. Unusable arguments (no --input, a run of another task, an unwritable DIR, no inputs found)
exit with status 2 before anything is restored or written. Slices are split over the devices (on a CPU one XLA
device per core unless --cpu_devices says otherwise, `jaxdiff.platform.set_cpu_devices`).
Python: `jaxdiff.inference.load_run(RUN).segment(PATH)`, for SAM `.segment_prompts(IMAGE, boxes=..., points=...)`
(see jaxdiff/inference.py).
"""
from __future__ import annotations

import csv
import json
import os
import sys

from jaxdiff import cli, platform
from jaxdiff import config as config_lib
from jaxdiff.errors import InputError, cli_errors


def _flags(fv):
    from absl import flags
    flags.DEFINE_string("workdir", None, "Trained work directory.", flag_values=fv)
    flags.DEFINE_string("input", None, "A NIfTI file, a folder of NIfTI files or BraTS case folders, or an image "
                        "file / folder of images.", flag_values=fv)
    flags.DEFINE_string("output", None, "Output folder (created).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 0, "Slices per compiled batch (0: the config's eval.batch_size, else 16).",
                         flag_values=fv)
    flags.DEFINE_integer("steps", 0, "MedSegDiff sampler steps (0: the config's diffusion.sample_steps).",
                         flag_values=fv)
    cli.sampler_flag(fv)
    flags.DEFINE_integer("ensemble", 0, "MedSegDiff ensemble size (0: the config's diffusion.ensemble).",
                         flag_values=fv)
    flags.DEFINE_integer("seed", 0, "MedSegDiff sampling seed.", flag_values=fv)
    flags.DEFINE_bool("skip_empty", True, "Leave out axial slices in which every modality is constant (outside the "
                      "head; probability 0 there); --noskip_empty runs every slice.", flag_values=fv)
    flags.DEFINE_string("prompts", None, "Segment Anything runs: CSV or JSON file of prompts (image, box or "
                        "points [, labels]), one row per prompt.", flag_values=fv)
    flags.DEFINE_integer("cpu_devices", None, "XLA CPU devices the slices are split over (0 or unset: one per core; "
                         "1: one device). CPU backend only.", flag_values=fv)


def check_task(workdir: str) -> str:
    """The run's task from its config.json (nothing is built); InputError naming what to run instead for a task
    predict does not handle."""
    from jaxdiff.inference import TASKS
    task = str(config_lib.from_json_file(os.path.join(workdir, "config.json")).get("task", ""))
    from jaxdiff.inference import PROMPT_TASKS
    if task in (*TASKS, *PROMPT_TASKS):
        return task
    raise InputError(f"{workdir} is a {task} run; predict handles tasks {', '.join(TASKS)} (draw samples with "
                     f"python -m jaxdiff.sample --workdir {workdir})")


def _report(path: str, message: str, failed: list) -> None:
    from tqdm.auto import tqdm
    failed.append(path)
    tqdm.write(f"error: {message}", file=sys.stderr)


def find_cases(path: str, modalities: tuple) -> tuple[list, list]:
    """(cases, problems) of a NIfTI input (`inference.find_volume_cases`); InputError when it holds no usable
    case at all (no NIfTI file, or none matching the model's modalities: the first problem, with the count)."""
    from jaxdiff.inference import find_volume_cases
    cases, problems = find_volume_cases(path, modalities)
    if not cases and not problems:
        raise InputError(f"--input {path}: no NIfTI files (.nii, .nii.gz)")
    if not cases:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{problems[0][1]}{more}")
    return cases, problems


def _volumes(predictor, cases: list, problems: list, out: str, rng, failed: list) -> int:
    import jax
    import nibabel as nib
    for name, message in problems:
        _report(name, message, failed)
    written = 0
    for i, (name, items) in enumerate(cases):
        try:
            res = predictor.segment(items, jax.random.fold_in(rng, i), progress=name)
        except InputError as e:
            _report(name, str(e), failed)
            continue
        nib.save(res["mask"], os.path.join(out, f"{name}.nii.gz"))
        if res["uncertainty"] is not None:
            nib.save(res["uncertainty"], os.path.join(out, f"{name}_uncertainty.nii.gz"))
        written += 1
    return written


def _unique_names(paths: list, root: str) -> dict:
    """{path: output stem}: the file stem, or its folder path joined by '_' where two files share a stem."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    out = {}
    for p, stem in zip(paths, stems):
        if stems.count(stem) > 1:
            rel = os.path.relpath(os.path.dirname(p), root) if os.path.isdir(root) else ""
            stem = "_".join([*(part for part in rel.split(os.sep) if part not in ("", ".")), stem])
        out[p] = stem
    return out


def _images(predictor, paths: list, path: str, out: str, rng, failed: list) -> int:
    import numpy as np
    from jaxdiff.preprocess.imageio import write_png
    names = _unique_names(paths, path)
    on_error = lambda p, m: _report(p, m, failed)   # noqa: E731
    if predictor.config.task == "classification":
        good, probs = predictor.classify_files(paths, on_error=on_error, progress="classifying")
        classes = predictor.class_names()
        with open(os.path.join(out, "predictions.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "predicted", *(f"p_{c}" for c in classes)])
            for p, row in zip(good, probs):
                rel = os.path.relpath(p, path) if os.path.isdir(path) else os.path.basename(p)
                writer.writerow([rel, classes[int(np.argmax(row))], *(f"{v:.6f}" for v in row)])
        return len(good)
    results = predictor.segment_files(paths, rng, on_error=on_error, progress="segmenting")
    for p, labels, var in results:
        write_png(os.path.join(out, f"{names[p]}_mask.png"), (labels > 0).astype(np.uint8) * 255)
        if var is not None:
            write_png(os.path.join(out, f"{names[p]}_uncertainty.png"), np.clip(4.0 * var, 0.0, 1.0))
    return len(results)


def _prompt_text(value, pairs: bool = False) -> str | None:
    """A JSON/CSV cell -> jaxdiff.sam's string form ("1,2,3,4"; points "x,y;x,y"); None when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (list, tuple)):
        if pairs and value and all(isinstance(v, (list, tuple)) for v in value):
            return ";".join(",".join(str(c) for c in v) for v in value)
        return ",".join(str(v) for v in value)
    return str(value)


def _prompt_rows(path: str) -> list[dict]:
    """The rows of a prompts file: CSV with a header, or JSON (a list of objects, or {"prompts": [...]})."""
    try:
        with open(path, newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--prompts {path}: cannot be read ({type(e).__name__}: {e})") from None
    if path.lower().endswith(".json") or text.lstrip().startswith(("[", "{")):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"--prompts {path}: not valid JSON ({e})") from None
        rows = rows.get("prompts") if isinstance(rows, dict) else rows
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InputError(f"--prompts {path}: expected a JSON list of objects (image, box or points, labels)")
        return rows
    reader = csv.DictReader(text.splitlines())
    if "image" not in (reader.fieldnames or []):
        raise InputError(f"--prompts {path}: no `image` column in the header (image, box, points, labels)")
    return list(reader)


def read_prompts(path: str, input_path: str) -> list[tuple[str, list]]:
    """[(image path, [(points (N, 2) | None, labels (N,) | None, box (4,) | None)])] of a prompts file, images in
    the file's order; each row checked (`jaxdiff.sam.parse_prompts`): InputError naming the file and row for a
    missing image or a malformed box / points / labels."""
    from jaxdiff.cli.sam import parse_prompts
    if not os.path.isfile(path):
        raise InputError(f"--prompts {path}: not found")
    rows = _prompt_rows(path)
    if not rows:
        raise InputError(f"--prompts {path}: no prompts")
    root = input_path if os.path.isdir(input_path) else os.path.dirname(input_path)
    images: dict = {}
    for i, row in enumerate(rows, 1):
        where = f"--prompts {path} row {i}"
        name = str(row.get("image") or "").strip()
        if not name:
            raise InputError(f"{where}: no image")
        image = next((c for c in (os.path.join(root, name), name) if os.path.isfile(c)), None)
        if image is None:
            raise InputError(f"{where}: image {name} not found (in {root or '.'} or as a path)")
        if os.path.isfile(input_path) and os.path.abspath(image) != os.path.abspath(input_path):
            raise InputError(f"{where}: image {name} is not --input {input_path}")
        box, points = _prompt_text(row.get("box")), _prompt_text(row.get("points"), pairs=True)
        labels = _prompt_text(row.get("labels"))
        if box is None and points is None:
            raise InputError(f"{where}: no prompt (give box x0,y0,x1,y1 or points x,y;x,y)")
        try:
            prompt = parse_prompts(points, labels, box)
        except InputError as e:
            raise InputError(f"{where}: {str(e).lstrip('-')}") from None
        images.setdefault(os.path.normpath(image), []).append(prompt)
    return list(images.items())


def _prompted(predictor, prompts: list, path: str, out: str, failed: list) -> int:
    """Segment Anything over `read_prompts`' images: masks and scores.csv in `out`; the number of masks."""
    import numpy as np
    from tqdm.auto import tqdm
    from jaxdiff.preprocess.imageio import write_png
    names = _unique_names([p for p, _ in prompts], path if os.path.isdir(path) else os.path.dirname(path))
    written, rows = 0, []
    for image, items in tqdm(prompts, desc="segmenting", unit="image", leave=False, dynamic_ncols=True,
                             file=sys.stderr, disable=None):
        try:
            a = predictor._image01(image)
            res = predictor._decode_prompts(predictor.prepare_image(a), a.shape[:2], items)
        except InputError as e:
            _report(image, str(e), failed)
            continue
        rel = os.path.relpath(image, path) if os.path.isdir(path) else os.path.basename(image)
        for k, (mask, iou) in enumerate(zip(res["mask"], res["iou"])):
            fname = f"{names[image]}_mask.png" if len(items) == 1 else f"{names[image]}_p{k}_mask.png"
            write_png(os.path.join(out, fname), mask * np.uint8(255))
            rows.append([rel, k, f"{iou:.6f}", fname])
            written += 1
    with open(os.path.join(out, "scores.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "prompt", "iou", "mask"])
        writer.writerows(rows)
    return written


def main(argv=None) -> int:
    reexec = cli.own_argv(argv)
    argv = list(sys.argv if argv is None else argv)
    with cli_errors():
        _, fv = config_lib.parse(argv, _flags, require_config=False)
        for flag in ("workdir", "input", "output"):
            if not getattr(fv, flag):
                raise InputError(f"missing --{flag} (python -m jaxdiff.predict --workdir RUN --input PATH --output "
                                 f"DIR; --help for usage)")
        if not os.path.exists(fv.input):
            raise InputError(f"--input {fv.input}: not found")
        for flag in ("batch_size", "steps", "ensemble"):
            if getattr(fv, flag) < 0:
                raise InputError(f"--{flag}: {getattr(fv, flag)} is negative")
        task = check_task(fv.workdir)
        overrides = cli.sampler_overrides(fv)
        config_lib.check_output_dir(fv.output, "--output")
        from jaxdiff import experiment, inference
        if task in inference.PROMPT_TASKS or fv.prompts:
            if task not in inference.PROMPT_TASKS:
                raise InputError(f"--prompts: {fv.workdir} is a {task} run; prompts are for Segment Anything "
                                 f"(promptable_segmentation) runs")
            if not fv.prompts:
                raise InputError(f"{fv.workdir} is a Segment Anything run: give --prompts FILE (CSV or JSON: image, "
                                 f"box x0,y0,x1,y1 or points x,y;x,y [, labels 1,0])")
            prompts = read_prompts(fv.prompts, fv.input)
            platform.setup(experiment.saved_config(fv.workdir), cpu_devices=cli.cpu_devices(fv.cpu_devices),
                           reexec=reexec)
            predictor = inference.load_run(fv.workdir)
            os.makedirs(fv.output, exist_ok=True)
            failed: list = []
            written = _prompted(predictor, prompts, fv.input, fv.output, failed)
            print(f"wrote {written} masks to {fv.output}, {len(failed)} failed")
            return 1 if failed else 0
        images = inference.is_image_input(fv.input)
        if task == "classification" and not images:
            raise InputError(f"--input {fv.input}: a classification run takes an image or a folder of images")
        if images:
            paths = inference.find_image_files(fv.input)
            if not paths:
                raise InputError(f"--input {fv.input}: no images ({', '.join(inference.IMAGE_EXTENSIONS)})")
        else:
            saved = config_lib.from_json_file(os.path.join(fv.workdir, "config.json"))
            cases, problems = find_cases(fv.input, inference.model_modalities(saved.data))
        platform.setup(experiment.saved_config(fv.workdir), cpu_devices=cli.cpu_devices(fv.cpu_devices),
                       reexec=reexec)
        import jax
        predictor = inference.load_run(fv.workdir, overrides, batch_size=fv.batch_size, ensemble=fv.ensemble,
                                       num_steps=fv.steps or None, seed=fv.seed,
                                       skip_empty=fv.skip_empty)
        os.makedirs(fv.output, exist_ok=True)
        failed: list = []
        rng = jax.random.PRNGKey(fv.seed)
        if images:
            written = _images(predictor, paths, fv.input, fv.output, rng, failed)
        else:
            written = _volumes(predictor, cases, problems, fv.output, rng, failed)
    what = "images" if images else "cases"
    print(f"wrote {written} {what} to {fv.output}, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
