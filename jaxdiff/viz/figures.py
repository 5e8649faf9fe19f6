"""Matplotlib figures of evaluation results: a confusion matrix, and images side by side in named columns."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from jaxdiff.io import files


def confusion_matrix(cm: np.ndarray, class_names: list, path: str) -> str:
    """Save a confusion-matrix heat map of cm (K, K) (rows: true, columns: predicted; counts and row %) as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(cm)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.0, 1.2 * k + 1.5))
    ax.imshow(cm, cmap="Blues")
    rows = np.maximum(cm.sum(1, keepdims=True), 1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{100 * cm[i, j] / rows[i, 0]:.0f}%", ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=9)
    ax.set_xticks(range(k), class_names)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    with files.open_write(path) as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return path


def image_columns(columns: dict, path: str, max_images: int = 4) -> str:
    """Save a grid of images in [0, 1]: one row per image (at most `max_images`), one column per entry of
    `columns` ({title: (N, H, W, C)}, C = 1 shown with a grey colormap, or 3), titled on the first row."""
    rows = min(max_images, min(len(images) for images in columns.values()))
    fig = Figure(figsize=(1.8 * len(columns), 1.9 * rows))
    for r in range(rows):
        for c, (name, images) in enumerate(columns.items()):
            ax = fig.add_subplot(rows, len(columns), r * len(columns) + c + 1)
            img = np.clip(np.asarray(images[r], np.float32), 0.0, 1.0)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.tight_layout()
    with files.open_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return path
