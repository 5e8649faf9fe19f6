"""3D volume figures: orthogonal-slice PNG montages (matplotlib, Agg) and interactive Plotly HTML views.

Orientation (the project convention, see `jaxdiff.io.nifti` and `jaxdiff.data.sources`): a volume is a RAS
array (X, Y, Z[, C]), the "(D, H, W, C)" of the 3D models; axis 0 runs toward the patient's Right, axis 1
toward Anterior, axis 2 toward Superior. Slices are shown as the 2D slice sources show them:
  axial    = volume[:, :, k] (fixed Z), anterior at the top, the patient's left on the image left;
  coronal  = volume[:, j, :] (fixed Y), superior at the top, the patient's left on the image left;
  sagittal = volume[i, :, :] (fixed X), superior at the top, posterior on the left, anterior on the right.
(each is `numpy.rot90` of the array slice). Pixel aspect ratios follow `spacing` (mm per voxel along X, Y,
Z). Grey levels span `value_range`, by default the min and max of everything shown in the figure, so real
and generated volumes share one scale. Multi-channel volumes show `channel` (default 0).
"""
from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxdiff.errors import InputError
from jaxdiff.io import files

VIEWS = ("axial", "coronal", "sagittal")
_FIXED_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def _as_volume(volume, channel: int = 0, what: str = "volume") -> np.ndarray:
    """(X, Y, Z) or (X, Y, Z, C) -> (X, Y, Z) float32 (channel `channel`); InputError otherwise."""
    v = np.asarray(volume, np.float32)
    if v.ndim == 4:
        if not 0 <= channel < v.shape[-1]:
            raise InputError(f"{what}: channel {channel} out of range for shape {v.shape}")
        v = v[..., channel]
    if v.ndim != 3 or min(v.shape) < 1:
        raise InputError(f"{what}: expected (D, H, W) or (D, H, W, C), got shape {np.shape(volume)}")
    if not np.all(np.isfinite(v)):
        raise InputError(f"{what}: contains NaN or infinite values")
    return v


def orthogonal_slice(volume: np.ndarray, view: str, index: int | None = None) -> np.ndarray:
    """The 2D display image of one slice of an (X, Y, Z) volume (orientation in the module docstring).

    Args:
      volume: (X, Y, Z) array; view: "axial", "coronal" or "sagittal"; index: slice along the fixed axis,
        default the middle one.
    Returns:
      axial (Y, X), coronal (Z, X), sagittal (Z, Y) array with the top row anterior/superior.
    """
    axis = _FIXED_AXIS[view]
    k = volume.shape[axis] // 2 if index is None else int(index)
    return np.rot90(np.take(volume, k, axis=axis))


def _aspect(view: str, spacing) -> float:
    """Height/width of one displayed pixel, from (sx, sy, sz) mm."""
    sx, sy, sz = (float(s) for s in spacing)
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[view]


def _value_range(arrays, value_range):
    """(lo, hi) from `value_range` or the joint min/max of `arrays` (hi > lo always)."""
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
    else:
        lo, hi = min(float(a.min()) for a in arrays), max(float(a.max()) for a in arrays)
    return lo, (hi if hi > lo else lo + 1.0)


def _save_figure(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    with files.open_write(path) as f:
        fig.savefig(f, format="png", dpi=fig.dpi, facecolor="black", bbox_inches="tight", pad_inches=0.05)
    return str(path)


def _panel_grid(panels, path: str, value_range, spacing, col_titles=None, row_titles=None,
                panel_inches: float = 2.0) -> str:
    """Draw a rows x cols list of (title, view, image2d) panels in grey and write the PNG."""
    rows, cols = len(panels), len(panels[0])
    lo, hi = _value_range([img for row in panels for _, _, img in row], value_range)
    fig = Figure(figsize=(panel_inches * cols, (panel_inches + 0.3) * rows), dpi=80, facecolor="black")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, row in enumerate(panels):
        for c, (title, view, img) in enumerate(row):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=_aspect(view, spacing), interpolation="nearest")
            ax.set_axis_off()
            label = (col_titles[c] + "\n" if col_titles and r == 0 else "") + title
            ax.set_title(label, color="white", fontsize=8)
            if row_titles and c == 0:
                ax.text(-0.05, 0.5, row_titles[r], color="white", fontsize=8, rotation=90,
                        transform=ax.transAxes, ha="right", va="center")
    return _save_figure(fig, path)


def save_montage(volume, path: str, n_slices: int = 1, spacing=(1.0, 1.0, 1.0), value_range=None,
                 channel: int = 0) -> str:
    """Orthogonal-slice montage PNG: one row per view (axial, coronal, sagittal).

    Args:
      volume: (D, H, W) or (D, H, W, C) RAS volume (X, Y, Z[, C]).
      path: output PNG (local or gs://).
      n_slices: slices per view; 1 shows the middle slice, n > 1 evenly spaced slices inside the volume.
      spacing: voxel size (mm) along X, Y, Z, for the aspect ratio.
      value_range: (lo, hi) grey scale; default the volume's min and max.
      channel: channel shown for multi-channel volumes.
    Returns:
      `path`.
    """
    v = _as_volume(volume, channel)
    panels = []
    for view in VIEWS:
        n = v.shape[_FIXED_AXIS[view]]
        ks = [n // 2] if n_slices == 1 else np.linspace(0, n - 1, n_slices + 2)[1:-1].round().astype(int)
        panels.append([(f"{view} {'xyz'[_FIXED_AXIS[view]]}={k}", view, orthogonal_slice(v, view, k))
                       for k in ks])
    return _panel_grid(panels, path, value_range, spacing)


def save_real_vs_generated(real, generated, path: str, max_cases: int = 4, spacing=(1.0, 1.0, 1.0),
                           value_range=None, channel: int = 0) -> str:
    """Real and generated volumes side by side: per row one real and one generated case, mid slices of
    the three views each (6 panels per row), on one shared grey scale.

    Args:
      real: (N, D, H, W, C) or (N, D, H, W); generated: (M, D', H', W'[, C]) (sizes may differ).
      path: output PNG; max_cases: rows shown (at most min(N, M)); other arguments as in `save_montage`.
    Returns:
      `path`.
    """
    real, generated = np.asarray(real), np.asarray(generated)
    if real.ndim not in (4, 5) or generated.ndim not in (4, 5):
        raise InputError(f"save_real_vs_generated: expected (N, D, H, W[, C]) batches, got shapes "
                         f"{real.shape} and {generated.shape}")
    rows = min(len(real), len(generated), max_cases)
    if rows < 1:
        raise InputError("save_real_vs_generated: empty real or generated batch")
    panels = []
    for i in range(rows):
        pair = [_as_volume(real[i], channel, "real volume"), _as_volume(generated[i], channel, "generated volume")]
        panels.append([(view, view, orthogonal_slice(v, view)) for v in pair for view in VIEWS])
    titles = ["real"] * 3 + ["generated"] * 3
    return _panel_grid(panels, path, value_range, spacing, col_titles=titles,
                       row_titles=[f"case {i}" for i in range(rows)])


def save_process(trajectory, path: str, num_frames: int = 8, spacing=(1.0, 1.0, 1.0), value_range=None,
                 channel: int = 0) -> str:
    """Diffusion-process figure: the mid axial slice of one sample at evenly spaced sampler steps.

    Args:
      trajectory: (S, D, H, W, C) or (S, D, H, W): the sample after each of S reverse steps (as returned
        by `ddpm_sample`/`ddim_sample` with return_trajectory=True, noisiest first, the last is x0).
      path: output PNG; num_frames: frames shown (at most S), always including the first and last step.
      value_range: grey scale; default the min/max of the last frame (the clean sample), noisy frames clip.
    Returns:
      `path`.
    """
    traj = np.asarray(trajectory)
    if traj.ndim not in (4, 5) or len(traj) < 1:
        raise InputError(f"save_process: expected a trajectory (S, D, H, W[, C]), got shape {traj.shape}")
    steps = np.unique(np.linspace(0, len(traj) - 1, min(num_frames, len(traj))).round().astype(int))
    frames = [_as_volume(traj[s], channel, "trajectory") for s in steps]
    value_range = _value_range([frames[-1]], None) if value_range is None else value_range
    panels = [[(f"step {s + 1}/{len(traj)}", "axial", orthogonal_slice(f, "axial")) for s, f in zip(steps, frames)]]
    return _panel_grid(panels, path, value_range, spacing)


def _block_mean(v: np.ndarray, step: int) -> np.ndarray:
    """Average over step^3 blocks (the volume is cropped to a multiple of `step`); block i is centred on
    voxel i * step + (step - 1) / 2 of the input."""
    if step == 1:
        return v
    n = [s // step for s in v.shape]
    v = v[:n[0] * step, :n[1] * step, :n[2] * step]
    return v.reshape(n[0], step, n[1], step, n[2], step).mean(axis=(1, 3, 5))


def volume_figure(volume, spacing=(1.0, 1.0, 1.0), title: str | None = None, max_side: int = 48,
                  isomin: float | None = None, value_range=None, channel: int = 0, colorscale: str = "Viridis"):
    """A Plotly figure of a volume: translucent isosurfaces (go.Volume) plus three mid-slice planes, hidden
    until their legend entry is clicked.

    Args:
      volume: (D, H, W[, C]) RAS volume (X, Y, Z[, C]); block-averaged so that no side exceeds `max_side`.
      spacing: voxel size in mm along X, Y, Z; axes are in mm from the centre of voxel (0, 0, 0) (x toward
        Right, y Anterior, z Superior).
      title: figure title; isomin: lowest isosurface value, default 25% into the value range (above an
        empty background); value_range: (lo, hi), default the volume's min and max; channel: for C > 1.
      colorscale: Plotly colour scale of the isosurfaces and slice planes.
    Returns:
      plotly.graph_objects.Figure (legend entries toggle the volume and each slice plane).
    """
    import plotly.graph_objects as go

    v = _as_volume(volume, channel)
    step = max(1, int(np.ceil(max(v.shape) / max_side)))
    v = _block_mean(v, step)
    lo, hi = _value_range([v], value_range)
    axes = [(np.arange(n, dtype=np.float32) * step + (step - 1) / 2) * float(s) for n, s in zip(v.shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    colour = dict(colorscale=colorscale, cmin=lo, cmax=hi)
    traces = [go.Volume(x=x.ravel(), y=y.ravel(), z=z.ravel(), value=v.ravel(), name="volume", showlegend=True,
                        isomin=lo + 0.25 * (hi - lo) if isomin is None else isomin, isomax=hi, opacity=0.2,
                        surface_count=10, caps=dict(x_show=False, y_show=False, z_show=False), **colour)]
    for view in VIEWS:
        axis = _FIXED_AXIS[view]
        k = v.shape[axis] // 2
        grid = [g.take(k, axis=axis) for g in (x, y, z)]
        traces.append(go.Surface(x=grid[0], y=grid[1], z=grid[2], surfacecolor=v.take(k, axis=axis),
                                 name=f"{view} slice (click to show)", showlegend=True, showscale=False,
                                 visible="legendonly", **colour))
    fig = go.Figure(traces)
    fig.update_layout(title=title, margin=dict(l=0, r=0, t=40 if title else 10, b=0), legend=dict(x=0, y=1),
                      scene=dict(aspectmode="data", xaxis_title="x: R (mm)", yaxis_title="y: A (mm)",
                                 zaxis_title="z: S (mm)"))
    return fig


def save_html(volume, path: str, spacing=(1.0, 1.0, 1.0), title: str | None = None, **kwargs) -> str:
    """Write an interactive, self-contained HTML view of a volume (plotly.js inline: opens offline).

    Args:
      volume: (D, H, W[, C]) RAS volume; spacing: mm per voxel along X, Y, Z; title: page/figure title.
      kwargs: `volume_figure` options (max_side, isomin, value_range, channel, colorscale).
    Returns:
      `path`. The file is about 4.8 MB of plotly.js plus ~25 bytes per displayed voxel (5.6 MB for 32^3,
      6.5 MB for 128^3 shown as 42^3).
    """
    fig = volume_figure(volume, spacing=spacing, title=title, **kwargs)
    html = fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    files.write_text(path, html)
    return str(path)
