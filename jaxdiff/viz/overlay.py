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
