"""Volume figures: orientation of the slices, PNG montages, and the Plotly HTML rendered in headless Chromium."""
from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from jaxdiff.errors import InputError
from jaxdiff.viz import volume as vv

CHROMIUM = "/usr/bin/chromium"


def _phantom(shape=(20, 24, 16), seed=0):
    """An ellipsoid 'brain' in [-1, 1] on a -1 background, brighter toward patient Right (high X), plus noise."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / 0.8) ** 2 for g in grids))
    v = np.clip(1.3 - r, 0, 1) * (0.6 + 0.4 * (grids[0] > 0))
    v = v + 0.03 * np.random.default_rng(seed).standard_normal(shape)
    return (2 * np.clip(v, 0, 1) - 1).astype(np.float32)


def _png(path):
    assert os.path.getsize(path) > 1000
    return np.asarray(Image.open(path).convert("L"), np.float32)


def test_slice_orientation():
    v = np.zeros((5, 6, 7), np.float32)
    v[4, 5, :] = 1  # toward Right and Anterior: axial top-right
    v[4, :, 6] = 2  # toward Right and Superior: coronal top-right
    v[:, 5, 6] = 3  # toward Anterior and Superior: sagittal top-right
    ax, co, sa = (vv.orthogonal_slice(v, view) for view in vv.VIEWS)
    assert ax.shape == (6, 5) and co.shape == (7, 5) and sa.shape == (7, 6)
    assert ax[0, -1] == 1 and co[0, -1] == 2 and sa[0, -1] == 3
    assert (ax.sum(), co.sum(), sa.sum()) == (1, 2, 3)  # the mid slices cut one marked voxel each
    top = vv.orthogonal_slice(v, "axial", 6)  # the X line (3) along the anterior edge, the Y line (2) on the right
    assert np.all(top[0] == 3) and np.all(top[1:, -1] == 2) and top[1:, :-1].sum() == 0


def test_pngs_written_and_non_trivial(tmp_path):
    vol = _phantom()
    montage = _png(vv.save_montage(vol[..., None], str(tmp_path / "m.png"), spacing=(1.0, 1.0, 1.5)))
    assert montage.shape[0] > 2 * montage.shape[1]  # three rows of one panel
    assert montage.std() > 20 and len(np.unique(montage)) > 50
    three = _png(vv.save_montage(vol, str(tmp_path / "m3.png"), n_slices=3))
    assert 0.7 < three.shape[1] / three.shape[0] < 1.5  # 3 x 3 panels
    real = np.stack([_phantom(seed=s) for s in range(3)])[..., None]
    gen = real[:2] + 0.2 * np.random.default_rng(1).standard_normal(real[:2].shape).astype(np.float32)
    pair = _png(vv.save_real_vs_generated(real, gen, str(tmp_path / "rg.png")))
    assert 2 < pair.shape[1] / pair.shape[0] < 5  # two cases x six panels
    left, right = pair[:, : pair.shape[1] // 2], pair[:, pair.shape[1] // 2:]
    assert right.std() != pytest.approx(left.std(), rel=1e-3)  # the generated half differs
    noise = np.random.default_rng(2).standard_normal((10, *vol.shape)).astype(np.float32)
    traj = np.linspace(0, 1, 10)[:, None, None, None] * vol + np.linspace(1, 0, 10)[:, None, None, None] * noise
    process = _png(vv.save_process(traj[..., None], str(tmp_path / "p.png"), num_frames=5))
    assert process.shape[1] > 3 * process.shape[0] and process.std() > 20  # one row of five frames
    with pytest.raises(InputError):
        vv.save_montage(vol[0], str(tmp_path / "bad.png"))


def _screenshot(html: str, png: str, profile: str) -> None:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
             "--use-angle=swiftshader", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--window-size=800,600", f"--screenshot={png}", "--virtual-time-budget=10000"]
    subprocess.run([CHROMIUM, *flags, "file://" + html], capture_output=True, timeout=90, check=False)
    assert os.path.isfile(png), "chromium wrote no screenshot"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")
def test_html_renders_in_headless_chromium(tmp_path):
    html = vv.save_html(_phantom((28, 32, 24)), str(tmp_path / "volume.html"), spacing=(1.0, 1.0, 1.2),
                        title="phantom")
    text = open(html).read()
    assert re.search(r"<script[^>]*\bsrc=", text) is None and len(text) > 3_000_000  # plotly.js inline
    png = str(tmp_path / "shot.png")
    _screenshot(os.path.abspath(html), png, str(tmp_path / "profile"))
    shot = np.asarray(Image.open(png).convert("RGB"), np.int32)
    assert shot.shape[:2] == (600, 800)
    # The WebGL scene (left of the colour bar, right of the legend): Viridis isosurfaces are green-dominant,
    # which neither the empty-figure background, nor plotly's "WebGL is not supported" notice, nor a blank
    # page contains (measured: 3% of this region for a rendered volume, 0 for those three).
    scene = shot[60:450, 120:600]
    r, g, b = scene[..., 0], scene[..., 1], scene[..., 2]
    green = np.mean((g > r + 20) & (g > b + 20))
    colours = len(np.unique(scene.reshape(-1, 3), axis=0))
    assert green > 0.005 and colours > 1000, (green, colours)
