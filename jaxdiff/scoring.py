"""Score a folder of predicted NIfTI label masks against a folder of truths, per case and region, in mm.

`score_folders(pred_dir, truth_dir, out_dir)` scores any tool's outputs (jaxdiff's, nnU-Net's, MONAI's) with
`jaxdiff.metrics.regions.case_metrics`: the regions, metrics and empty-case conventions are described there.

Files and pairing
  Each folder holds one label mask per case, found as
    <dir>/<case>.nii.gz                   (nnU-Net's predictions and labelsTr)
    <dir>/<case>_seg.nii.gz or -seg       (flat BraTS-style; other files <case>_* or <case>-* beside it, such as
                                           the modality <case>_flair.nii.gz, are ignored)
    <dir>/<case>/<case>_seg.nii.gz or -seg (the BraTS layout; MONAI's SaveImage default layout)
  (.nii works as .nii.gz). Cases pair by name. Unpaired cases (a truth without a prediction or a prediction
  without a truth) raise one `InputError` naming them (`unpaired="error"`, default: a mean over fewer cases is
  not the same number), or are left out with a warning naming them (`unpaired="skip"`, as nnU-Net's --chill).
Geometry
  Prediction and truth of a case must have the same shape and affine (every entry within `affine_atol`), else
  an `InputError` names the prediction file; the voxel spacing is the truth header's `get_zooms()[:3]`. No
  resampling or reorientation: the arrays are compared voxel by voxel.
Outputs (written only after every case was scored)
  <out_dir>/per_case.csv: one row per case and region (case, region, dice, iou, sensitivity, specificity,
    hd95_mm, assd_mm, truth_voxels, pred_voxels), raw values (nan for undefined).
  <out_dir>/summary.json: per region and metric mean, std, median, q1, q3, n, undefined (`summarize_cases`),
    the number of cases, the regions, the conventions as text, the folders and any skipped cases.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import warnings

import numpy as np

from jaxdiff import reporting
from jaxdiff.errors import InputError
from jaxdiff.metrics import regions as regions_lib
from jaxdiff.reporting import summary_table  # noqa: F401 (the table `jaxdiff.evaluate` prints)

COLUMNS = ("case", "region") + regions_lib.METRICS + regions_lib.COUNTS
_EXTENSIONS = (".nii.gz", ".nii")
_SEG_SUFFIXES = ("_seg", "-seg")
_NAMES_SHOWN = 8


def _stem(filename: str) -> str | None:
    """File name without its NIfTI extension, or None for a file that is not NIfTI."""
    for ext in _EXTENSIONS:
        if filename.endswith(ext) and len(filename) > len(ext):
            return filename[:-len(ext)]
    return None


def _without_seg(stem: str) -> str | None:
    for suffix in _SEG_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[:-len(suffix)]
    return None


def find_masks(folder: str, role: str = "folder") -> dict:
    """Label masks of a folder by case name: {case: path}, sorted by case (layouts in the module docstring).

    role names the folder in errors ("pred_dir", "truth_dir"). A missing folder, no masks, or two files for one
    case raise `InputError`.
    """
    if not os.path.isdir(folder):
        raise InputError(f"{role}: {folder} is not a folder")
    flat, found = {}, {}

    def add(case, path):
        if case in found:
            raise InputError(f"{role}: two masks for case {case}: {found[case]} and {path}")
        found[case] = path

    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            for name in (entry + suffix + ext for suffix in _SEG_SUFFIXES for ext in _EXTENSIONS):
                if os.path.isfile(os.path.join(path, name)):
                    add(entry, os.path.join(path, name))
        elif _stem(entry) is not None:
            flat[_stem(entry)] = path
    segs = {_without_seg(stem) for stem in flat if _without_seg(stem) is not None}
    for stem, path in flat.items():
        if _without_seg(stem) is not None:
            add(_without_seg(stem), path)
        elif not any(stem.startswith(case + sep) for case in segs for sep in "_-"):  # not <case>_flair beside
            add(stem, path)                                                           # <case>_seg
    if not found:
        raise InputError(f"{role}: no NIfTI masks in {folder} (expected <case>.nii.gz, <case>_seg.nii.gz or "
                         f"<case>/<case>_seg.nii.gz)")
    return dict(sorted(found.items()))


def _names(cases) -> str:
    cases = sorted(cases)
    shown = ", ".join(cases[:_NAMES_SHOWN])
    return shown + (f" and {len(cases) - _NAMES_SHOWN} more" if len(cases) > _NAMES_SHOWN else "")


def pair_cases(pred_dir: str, truth_dir: str, unpaired: str = "error") -> tuple:
    """(pairs {case: (pred_path, truth_path)}, skipped {"no_prediction": [...], "no_truth": [...]}).

    unpaired: "error" raises one `InputError` naming the unpaired cases; "skip" warns and leaves them out.
    """
    if unpaired not in ("error", "skip"):
        raise InputError(f"unpaired: {unpaired!r} must be 'error' or 'skip'")
    preds, truths = find_masks(pred_dir, "pred_dir"), find_masks(truth_dir, "truth_dir")
    skipped = {"no_prediction": sorted(set(truths) - set(preds)), "no_truth": sorted(set(preds) - set(truths))}
    if skipped["no_prediction"] or skipped["no_truth"]:
        parts = [f"no prediction in {pred_dir} for {_names(skipped['no_prediction'])}"] if skipped["no_prediction"] \
            else []
        parts += [f"no truth in {truth_dir} for {_names(skipped['no_truth'])}"] if skipped["no_truth"] else []
        message = "unpaired cases: " + "; ".join(parts)
        if unpaired == "error":
            raise InputError(message + " (unpaired='skip' scores the pairs only)")
        warnings.warn(message + "; scoring the pairs only", stacklevel=3)
    pairs = {case: (preds[case], truths[case]) for case in truths if case in preds}
    if not pairs:
        raise InputError(f"pred_dir: no case of {pred_dir} has a truth in {truth_dir}")
    return pairs, skipped


def _load(path: str):
    """(label array (D, H, W), affine (4, 4), zooms (3,)) of a NIfTI mask; unreadable files raise `InputError`."""
    import nibabel as nib

    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel, gzip and zlib raise many types for a bad file
        raise InputError(f"{path}: cannot read as NIfTI ({type(e).__name__}: {e})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D label volume, got shape {data.shape}")
    return data, np.asarray(img.affine, np.float64), tuple(float(z) for z in img.header.get_zooms()[:3])


def _score_case(case, pred_path, truth_path, regions, empty_hd95, both_empty, connectivity, affine_atol):
    """(case, {region: metrics}, truth labels) of one pair; regions None = BraTS or foreground from its labels."""
    truth, truth_affine, spacing = _load(truth_path)
    pred, pred_affine, _ = _load(pred_path)
    if pred.shape != truth.shape:
        raise InputError(f"{pred_path}: shape {pred.shape} differs from the truth's {truth.shape} ({truth_path})")
    gap = float(np.abs(pred_affine - truth_affine).max())
    if not gap <= affine_atol:
        raise InputError(f"{pred_path}: affine differs from the truth's ({truth_path}) by up to {gap:.3g} "
                         f"(tolerance {affine_atol})")
    try:
        truth = regions_lib.as_labels(truth, "truth")
        pred = regions_lib.as_labels(pred, "pred")
        truth_labels = regions_lib.labels_in(truth)
        if regions is None:  # a guess from this case; score_folders rescores cases whose guess the dataset overrules
            regions = regions_lib.regions_for_labels(truth_labels | regions_lib.labels_in(pred))
        metrics = regions_lib.case_metrics(pred, truth, spacing, regions, empty_hd95=empty_hd95,
                                           both_empty=both_empty, connectivity=connectivity)
    except InputError as e:
        raise InputError(f"{pred_path if str(e).startswith('pred') else truth_path}: {e}") from None
    return case, metrics, truth_labels


def _run(jobs, workers: int, progress: bool, desc: str) -> list:
    """Results of `_score_case(*job)` for each job, in a pool of `workers` spawned processes (in-process if <= 1)."""
    from tqdm.auto import tqdm

    results = []
    with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(_score_case(*job))
                bar.update()
            return results
        # spawn: the parent may have started JAX's threads, which fork would copy in an unsafe state
        context = multiprocessing.get_context("spawn")
        done = set()
        try:
            with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
                futures = {pool.submit(_score_case, *job): i for i, job in enumerate(jobs)}
                try:
                    for future in concurrent.futures.as_completed(futures):
                        results.append(future.result())
                        done.add(futures[future])
                        bar.update()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        except concurrent.futures.process.BrokenProcessPool as e:  # e.g. a script read from stdin cannot spawn
            warnings.warn(f"scoring: the process pool failed ({e}); scoring the remaining cases in this process",
                          stacklevel=3)
            for i, job in enumerate(jobs):
                if i not in done:
                    results.append(_score_case(*job))
                    bar.update()
    return results


def score_folders(pred_dir: str, truth_dir: str, out_dir: str | None = None, regions=None,
                  empty_hd95="diagonal", workers: int | None = None, progress: bool = True, *,
                  both_empty: str = "perfect", unpaired: str = "error", connectivity: int = 1,
                  affine_atol: float = 1e-3) -> dict:
    """Score every predicted mask of `pred_dir` against its truth in `truth_dir`; returns the summary dict.

    regions: a region table (`jaxdiff.metrics.regions`); None = `regions_for_labels` of all the truths' labels
    (BraTS WT/TC/ET for labels within {0, 1, 2, 4}, else one foreground). empty_hd95, both_empty, connectivity:
    as `regions.case_metrics`. workers: processes (None = one per CPU core, at most one per case; 1 = in this
    process). unpaired: "error" or "skip" (module docstring). affine_atol: largest difference allowed between
    the affine entries of a prediction and its truth. Writes per_case.csv and summary.json to `out_dir` if given.
    Summary: {"title", "num_cases", "regions", "metrics": {region: {metric: {mean, std, median, q1, q3, n,
    undefined}}}, "conventions", "pred_dir", "truth_dir", "skipped", "per_case_csv"}.
    """
    pairs, skipped = pair_cases(pred_dir, truth_dir, unpaired)
    table = None if regions is None else regions_lib.check_regions(regions)
    regions_lib.empty_distance(empty_hd95, (1, 1, 1), (1.0, 1.0, 1.0))  # bad settings fail before any file is read
    if both_empty not in ("perfect", "nan"):
        raise InputError(f"both_empty: {both_empty!r} must be 'perfect' or 'nan'")
    workers = min(os.cpu_count() or 1, len(pairs)) if workers is None else int(workers)
    settings = (empty_hd95, both_empty, connectivity, affine_atol)
    jobs = [(case, pred, truth, table, *settings) for case, (pred, truth) in pairs.items()]
    results = {case: (metrics, labels) for case, metrics, labels in _run(jobs, workers, progress, "scoring")}
    if table is None:
        table = regions_lib.regions_for_labels(set().union(*(labels for _, labels in results.values())))
        redo = [(case, *pairs[case], table, *settings) for case, (metrics, _) in results.items()
                if list(metrics) != list(table)]
        results.update({case: (metrics, labels)
                        for case, metrics, labels in _run(redo, workers, progress, "rescoring")})
    rows = [{"case": case, "region": region, **results[case][0][region]} for case in pairs for region in table]
    summary = {
        "title": f"{len(pairs)} cases, predictions {pred_dir} vs truths {truth_dir}",
        "num_cases": len(pairs),
        "regions": {name: "every label > 0" if labels is None else list(labels) for name, labels in table.items()},
        "metrics": regions_lib.summarize_cases(rows),
        "conventions": regions_lib.conventions(empty_hd95, both_empty, connectivity),
        "pred_dir": str(pred_dir), "truth_dir": str(truth_dir), "skipped": skipped, "per_case_csv": None,
    }
    if out_dir is not None:
        summary["per_case_csv"] = reporting.write_case_scores(out_dir, rows, COLUMNS, summary,
                                                              "summary.json")["per_case_csv"]
    return summary
