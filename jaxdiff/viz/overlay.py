"""Segmentation figures: image | truth | prediction | uncertainty rows, contour overlays (matplotlib)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxdiff.io import files  # noqa: E402


def segmentation_panel(images, truths, preds, path: str, uncertainty=None, titles=None) -> str:
    """Save one row per case: image, truth overlay, prediction overlay (and uncertainty if given).

    Args:
      images: (N, H, W, C) in [-1, 1] (the first channel is shown).
      truths, preds: (N, H, W[, 1]) binary masks.
      uncertainty: optional (N, H, W[, 1]) per-pixel ensemble variance.
      titles: optional N strings (e.g. per-case Dice).
    """
    n = len(images)
    cols = 4 if uncertainty is not None else 3
    fig, axes = plt.subplots(n, cols, figsize=(2.4 * cols, 2.4 * n), squeeze=False)
    for i in range(n):
        img = np.asarray(images[i])[..., 0]
        t, p = np.asarray(truths[i]).reshape(img.shape), np.asarray(preds[i]).reshape(img.shape)
        panels = [("image", None), ("truth", t), ("prediction", p)]
        for j, (name, m) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=-1, vmax=1)
            if m is not None:
                ax.imshow(np.ma.masked_where(m < 0.5, m), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
                ax.contour(t, levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_title(name if i == 0 else "", fontsize=8)
            ax.axis("off")
        if uncertainty is not None:
            ax = axes[i, 3]
            im = ax.imshow(np.asarray(uncertainty[i]).reshape(img.shape), cmap="magma")
            ax.set_title("uncertainty (var)" if i == 0 else "", fontsize=8)
            ax.axis("off")
            fig.colorbar(im, ax=ax, fraction=0.046)
        if titles is not None:
            axes[i, 0].text(2, 8, titles[i], color="yellow", fontsize=7)
    fig.tight_layout()
    with files.open_write(path) as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return path


# Fill colours of the regions drawn by `region_panel`, by name (others cycle through REGION_CYCLE).
REGION_COLOURS = {"WT": "#ffd400", "TC": "#ff3b30", "ET": "#1e90ff", "foreground": "#ff8c00"}
REGION_CYCLE = ("#ff8c00", "#ff3b30", "#1e90ff", "#32cd32", "#da70d6")


def _region_masks(labels, regions: dict) -> list:
    """[(name, bool mask)] of a label map for each region of a table {name: labels or None (every label > 0)}."""
    labels = np.asarray(labels)
    return [(name, labels > 0 if members is None else np.isin(labels, members)) for name, members in regions.items()]


def _region_rgba(labels, regions: dict, colours: dict, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 4) overlay: each pixel in the colour of the last region of `regions` that holds it (the innermost of
    nested regions such as WT > TC > ET), transparent outside every region."""
    from matplotlib.colors import to_rgba
    masks = _region_masks(labels, regions)
    out = np.zeros((*masks[0][1].shape, 4), np.float32)
    for name, m in masks:
        out[m] = (*to_rgba(colours[name])[:3], alpha)
    return out


def region_panel(images, truths, preds, path: str, regions: dict, uncertainty=None, titles=None,
                 suptitle: str = "") -> str:
    """Save one row per panel: image, truth regions, predicted regions (and uncertainty if given).

    Args:
      images: N arrays (H, W, C) in [-1, 1] (the first channel is shown).
      truths, preds: N label maps (H, W) (e.g. BraTS labels 0/1/2/4, or 0/1).
      regions: region table {name: labels, or None for every label > 0} (`jaxdiff.metrics.regions`); each pixel
        is painted in the colour (`REGION_COLOURS`) of the innermost region holding it (for BraTS: WT-only
        oedema, TC-only necrosis, ET), and the truth's outline of the first region is drawn on the prediction.
      uncertainty: optional N maps (H, W) of per-pixel ensemble variance.
      titles: optional N strings written above each row (e.g. case id, slice, per-region Dice).
      suptitle: optional figure title.
    """
    from matplotlib.patches import Patch
    n = len(images)
    cols = 4 if uncertainty is not None else 3
    colours = {name: REGION_COLOURS.get(name, REGION_CYCLE[i % len(REGION_CYCLE)]) for i, name in enumerate(regions)}
    row_h, top_in, bottom_in = 2.6, 0.95 if suptitle else 0.75, 0.45
    height = n * row_h + top_in + bottom_in
    fig, axes = plt.subplots(n, cols, figsize=(2.4 * cols + 0.4, height), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.96 if uncertainty is not None else 0.98, top=1 - top_in / height,
                        bottom=bottom_in / height, wspace=0.06, hspace=0.28)
    for i in range(n):
        img = np.asarray(images[i])[..., 0]
        first_truth = _region_masks(truths[i], regions)[0][1]
        for j, labels in enumerate((None, truths[i], preds[i])):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            if labels is not None:
                ax.imshow(_region_rgba(labels, regions, colours), interpolation="nearest")
                if j == 2 and first_truth.any():
                    ax.contour(first_truth, levels=[0.5], colors="lime", linewidths=0.8)
            ax.axis("off")
        if uncertainty is not None:
            ax = axes[i, 3]
            im = ax.imshow(np.asarray(uncertainty[i]).reshape(img.shape), cmap="magma", interpolation="nearest")
            ax.axis("off")
            fig.colorbar(im, ax=ax, fraction=0.046)
        if titles is not None:
            axes[i, 0].set_title(titles[i], loc="left", fontsize=7.5)
    names = ["image", "truth", "prediction"] + (["uncertainty (ensemble variance)"] if uncertainty is not None else [])
    for j, name in enumerate(names):
        box = axes[0, j].get_position()
        fig.text((box.x0 + box.x1) / 2, 1 - (top_in - 0.45) / height, name, ha="center", va="center", fontsize=8.5)
    handles = [Patch(color=c, alpha=0.7, label=r) for r, c in colours.items()]
    handles.append(Patch(facecolor="none", edgecolor="lime", label=f"truth {next(iter(regions))} outline"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7.5, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9, y=1 - 0.1 / height, va="top")
    with files.open_write(path) as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return path
