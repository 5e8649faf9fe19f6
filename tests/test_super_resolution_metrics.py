"""The super-resolution report: interpolation baselines, per-method scores, table, CSV and figure."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from jaxdiff.errors import InputError
from jaxdiff.evaluators import super_resolution


def smooth_images(n, size, seed):
    """(n, size, size, 1) in [0, 1]: sums of random low-frequency cosines plus an edge."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        fx, fy, phase = rng.uniform(0.5, 2.5, 2).tolist() + [rng.uniform(0, 6.3)]
        img = 0.5 + 0.3 * np.cos(2 * np.pi * (fx * x + fy * y) + phase) + 0.2 * (x > rng.uniform(0.3, 0.7))
        out.append(img)
    return np.clip(np.stack(out)[..., None], 0, 1).astype(np.float32)


def test_nearest_baseline_is_pixel_replication():
    low = np.random.default_rng(0).random((3, 12, 12, 1)).astype(np.float32)  # the report's shapes: one compile
    up = super_resolution.upsample_baselines(low, (24, 24))
    np.testing.assert_allclose(np.asarray(up["nearest"]), low.repeat(2, 1).repeat(2, 2), atol=1e-6)
    assert set(up) == {"nearest", "bilinear", "bicubic", "lanczos"}
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in up.values())


def test_sr_report_files_and_ranking(tmp_path):
    high = smooth_images(3, 24, seed=1)
    low = high.reshape(3, 12, 2, 12, 2, 1).mean(axis=(2, 4))  # 2x area downsampling
    good = np.clip(high + 0.01 * np.random.default_rng(2).normal(size=high.shape), 0, 1)
    report = super_resolution.sr_report(high, low, {"model": good}, str(tmp_path))
    metrics = report["metrics"]
    assert list(metrics) == ["nearest", "bilinear", "bicubic", "lanczos", "model"]
    assert "not Inception" in report["features"] and report["num_images"] == 3
    # The near-perfect "model" wins every quality column; nearest neighbour is the worst interpolation.
    for name in ("nearest", "bilinear", "bicubic", "lanczos"):
        assert metrics["model"]["psnr"] > metrics[name]["psnr"]
        assert metrics["model"]["ssim"] > metrics[name]["ssim"]
        assert metrics["model"]["perceptual"] < metrics[name]["perceptual"]
    assert metrics["nearest"]["psnr"] < metrics["bilinear"]["psnr"]
    for m in metrics.values():
        assert m["dssim"] == pytest.approx((1 - m["ssim"]) / 2, abs=1e-6)
    assert metrics["bilinear"]["sharpness"] < report["hr_sharpness"]  # interpolation blurs

    table = (tmp_path / "sr_comparison.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines() if line.startswith("| ")}
    assert all(cell.strip().startswith("**") for cell in rows["model"][:4])  # best PSNR, SSIM, DSSIM, perceptual
    assert not any("**" in cell for cell in rows["nearest"][:4])
    assert "not Inception" in table
    rows = list(csv.DictReader(open(tmp_path / "sr_comparison.csv")))
    assert [r["method"] for r in rows] == list(metrics)
    assert float(rows[-1]["psnr"]) == pytest.approx(metrics["model"]["psnr"], rel=1e-5)
    with Image.open(tmp_path / "sr_comparison.png") as png:
        assert png.width > png.height > 100  # 3 rows x 7 columns (LR, 5 methods, HR)


def test_sr_report_rejects_bad_predictions(tmp_path):
    high = smooth_images(2, 16, seed=3)
    low = high[:, ::2, ::2]
    with pytest.raises(InputError, match="'model'"):
        super_resolution.sr_report(high, low, {"model": high[:, :8]}, str(tmp_path))
    with pytest.raises(InputError, match="bicubic"):
        super_resolution.sr_report(high, low, {"bicubic": high}, str(tmp_path))
    with pytest.raises(InputError, match="NaN.*'model'"):
        super_resolution.sr_report(high, low, {"model": np.full_like(high, np.nan)}, str(tmp_path))
    assert not (tmp_path / "sr_comparison.md").exists()
