"""Evaluation shared by the segmentation tasks: per-case metrics, their means, and overlay figures."""
from __future__ import annotations

import os

import numpy as np

from jaxdiff.io import files
from jaxdiff.metrics import segmentation
from jaxdiff.viz import overlay


def collect(source, num: int | None) -> dict:
    """Stack the first `num` examples (all if None) of a random-access source into arrays."""
    n = len(source) if num is None else min(num, len(source))
    examples = [source[i] for i in range(n)]
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def report(images, masks, preds, out_dir: str, spacing=(1.0, 1.0), uncertainty=None, num_figures: int = 6,
           extra: dict | None = None) -> dict:
    """Per-case metrics of `preds` vs `masks` (N, H, W, 1), their means, overlays of the first cases.

    Writes `<out_dir>/evaluation.json` (means, per-case lists) and `<out_dir>/overlays.png`. Returns the
    per-case means (conventions in `jaxdiff.metrics.segmentation`), counts of undefined cases, the seed S0's
    batch-level figures for comparison, and `extra`.
    """
    truth = np.asarray(masks)[..., 0] > 0.5
    pred = np.asarray(preds)[..., 0] > 0.5
    per_case = segmentation.per_case(pred, truth, spacing=spacing)
    means = segmentation.summarize(per_case)
    seed = segmentation.seed_batch_metrics(pred, truth)
    k = min(num_figures, len(pred))
    titles = [f"Dice {d:.2f}" for d in per_case["dice"][:k]]
    fig = overlay.segmentation_panel(images[:k], truth[:k], pred[:k], os.path.join(out_dir, "overlays.png"),
                                     uncertainty=None if uncertainty is None else uncertainty[:k], titles=titles)
    has_tumour = truth.reshape(len(truth), -1).any(1)
    tumour_only = {f"{k}_tumour_cases": float(np.mean(per_case[k][has_tumour])) if has_tumour.any() else float("nan")
                   for k in ("dice", "iou")}
    out = {**means, **tumour_only, "num_cases": int(len(pred)), "num_cases_with_tumour": int(has_tumour.sum()),
           **(extra or {}), "seed_batch_metrics": seed, "overlays_png": fig}
    files.write_text(os.path.join(out_dir, "evaluation.json"), files.strict_json(
        {"mean": out, "per_case": {k: [float(v) for v in vals] for k, vals in per_case.items()}}, indent=1))
    return out
