"""Matplotlib figures of the preprocessing: per-image rows (original, cleaned crop, MUSICA, clusters, CDFs)
and the four k-selection curves."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxdiff.io import files

_CHANNEL_COLOURS = ("red", "green", "blue")


def _figure(rows: int, cols: int, size: float = 2.4):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    return fig, axes


def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    with files.open_write(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return str(path)


def plot_cdfs(ax, cdfs: np.ndarray) -> None:
    """Draw (bins, C) per-channel CDFs (C = 1: grey; C = 3: red, green, blue) on a matplotlib axis."""
    x = np.arange(1, cdfs.shape[0] + 1) / cdfs.shape[0]
    colours = ("black",) if cdfs.shape[1] == 1 else _CHANNEL_COLOURS
    for c, colour in enumerate(colours):
        ax.plot(x, cdfs[:, c], color=colour, lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="intensity", ylabel="CDF")


def _show(ax, image, title: str, box=None) -> None:
    a = np.asarray(image)
    ax.imshow(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a, cmap="gray", vmin=0, vmax=1 if
              a.dtype != np.uint8 else 255)
    if box is not None:
        r0, c0, r1, c1 = box
        ax.plot([c0, c1, c1, c0, c0], [r0, r0, r1, r1, r0], color="yellow", lw=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def save_overview(path: str, rows: Sequence[dict]) -> str:
    """One row per image: dicts with "name", "original" (H, W, C) in [0, 1], "box" (crop box in the original),
    "cleaned", "enhanced" (S, S, C) in [0, 1], "mask" (S, S, 3) uint8, "cdfs" (bins, C). Returns the path."""
    fig, axes = _figure(len(rows), 5)
    for ax, row in zip(axes, rows):
        _show(ax[0], row["original"], f"{row['name']}\n{row['method']}", row["box"])
        _show(ax[1], row["cleaned"], "cleaned crop")
        _show(ax[2], row["enhanced"], "MUSICA")
        _show(ax[3], row["mask"], "clusters")
        plot_cdfs(ax[4], row["cdfs"])
    return _save(fig, path)


def save_k_curves(path: str, ks: Sequence[int], curves: dict, chosen: int) -> str:
    """WCSS, BCSS, silhouette and Calinski-Harabasz against k (mean over images), chosen k marked."""
    from jaxdiff.preprocess.kmeans import CURVES
    fig, axes = _figure(1, 4, size=3.0)
    for ax, name in zip(axes[0], CURVES):
        ax.plot(list(ks), np.asarray(curves[name]).reshape(-1, len(ks)).mean(0), "o-", ms=3)
        ax.axvline(chosen, color="red", ls="--", lw=1)
        ax.set(xlabel="k", title=name.replace("_", "-"))
    fig.suptitle(f"chosen k = {chosen} (mean of normalised scores)", fontsize=9)
    return _save(fig, path)
