"""MS-SSIM (2D and 3D) against an independent per-scale scikit-image computation, and the 3D generation report's
pairwise MS-SSIM on [-1, 1] volumes."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import block_reduce
from skimage.metrics import structural_similarity

from jaxdiff.errors import InputError
from jaxdiff.metrics import image_quality as iq

WANG_2003 = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _sk(a, b, data_range, k1=0.01):
    return structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, K1=k1, K2=0.03)


def _reference(x, y, scales, data_range=1.0):
    """MS-SSIM of one single-channel pair (any number of spatial axes) from scikit-image alone: at each scale
    SSIM (coarsest) or its contrast-structure term (finer: SSIM with K1 = 1e4, whose luminance factor is 1 to
    1e-8), the Wang et al. (2003) weights cut to `scales` and renormalised, means clipped at 0, 2x block-mean
    pooling after dropping an odd last row."""
    w = np.array(WANG_2003[:scales]) / sum(WANG_2003[:scales])
    out = 1.0
    for j in range(scales):
        last = j == scales - 1
        value = _sk(x, y, data_range, k1=0.01 if last else 1e4)
        out *= max(value, 0.0) ** w[j]
        crop = tuple(slice(0, n // 2 * 2) for n in x.shape)
        x, y = (block_reduce(a[crop], (2,) * a.ndim, np.mean) for a in (x, y))
    return out


def _pair(shape, seed):
    """Correlated structured pair in [0, 1], (1, *shape, C)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[:-1]], indexing="ij")
    base = 0.5 + 0.3 * np.sin(5 * grids[0] + 2 * grids[1]) * np.cos(3 * grids[-1]) + 0.2 * (grids[0] > 0.1)
    x = np.clip(base[..., None] + 0.1 * rng.standard_normal(shape), 0, 1)
    y = np.clip(x + 0.15 * rng.standard_normal(shape), 0, 1)
    return x[None].astype(np.float32), y[None].astype(np.float32)


@pytest.mark.parametrize("shape, scales", [((48, 46, 50, 2), 3),    # 3D: 46 -> 23 -> 11, 3 of the 5 scales
                                           ((180, 177, 1), 5)])     # 2D: all 5 scales, odd side pooled
def test_ms_ssim_matches_per_scale_skimage(shape, scales):
    x, y = _pair(shape, 0)
    assert iq.num_scales(shape[:-1]) == scales
    ref = np.mean([_reference(x[0, ..., c].astype(np.float64), y[0, ..., c].astype(np.float64), scales)
                   for c in range(shape[-1])])
    assert 0.2 < ref < 0.95
    np.testing.assert_allclose(iq.ms_ssim(x, y), [ref], atol=2e-5)


def _head(n, shift, seed):
    """(1, n, n, n, 1) head-like volume in [-1, 1] as the 3D phantoms: background -1, a bright rim, tissue
    values of both signs."""
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij"))
    centre, radii = np.array(shift)[:, None, None, None], np.array([0.8, 0.7, 0.75])[:, None, None, None]
    r = np.sqrt((((g - centre) / radii) ** 2).sum(0))
    rng = np.random.default_rng(seed)
    tissue = 0.5 * np.sin(4 * g[0] + rng.uniform(0, 6)) * np.cos(3 * g[1] + rng.uniform(0, 6))
    return np.where(r > 1.0, -1.0, np.where(r > 0.85, 0.6, tissue))[None, ..., None].astype(np.float32)


def test_report_ms_ssim_of_minus1_1_volumes_is_not_zero():
    # 32^3 volumes in [-1, 1] as in configs/brain3d_tiny.py: the report used to score them with data_range 2 on
    # the raw values, where the coarsest SSIM's luminance term goes negative and the clipped product reads 0.
    vols = np.concatenate([_head(32, (0, 0, 0), 0), _head(32, (0.05, -0.05, 0), 1), _head(32, (0, 0.05, 0), 2)])
    got = iq.pairwise_ms_ssim(vols)
    unit = (vols[..., 0].astype(np.float64) + 1) / 2
    ref = np.mean([_reference(unit[i], unit[j], 2) for i, j in ((0, 1), (0, 2), (1, 2))])
    assert ref > 0.3
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert iq.pairwise_ms_ssim(vols[[0, 0]]) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_refuses_negative_intensities_and_too_small_inputs():
    x = _head(32, (0, 0, 0), 0)
    with pytest.raises(InputError, match=r"\[0, data_range"):
        iq.ms_ssim(x, x, data_range=2.0)
    with pytest.raises(InputError, match="smaller than the 11-voxel"):
        iq.ms_ssim(np.zeros((1, 10, 32, 32, 1)), np.zeros((1, 10, 32, 32, 1)))
    with pytest.raises(InputError, match="3 scales need spatial sides >= 44"):
        iq.ms_ssim((x + 1) / 2, (x + 1) / 2, weights=WANG_2003[:3])
