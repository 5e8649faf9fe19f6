"""Segmentation metrics: hand-computed values, conventions, and an independent brute-force check."""
from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from jaxdiff.errors import InputError
from jaxdiff.metrics import segmentation as seg

PRED = np.array([[1, 1, 0], [0, 0, 0]])
TRUTH = np.array([[1, 0, 0], [1, 0, 0]])  # tp 1, fp 1, fn 1, tn 3


def square(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def blob(rng, shape, sigma=2.0):
    """A random smooth binary blob (thresholded smoothed noise)."""
    m = ndimage.gaussian_filter(rng.standard_normal(shape), sigma) > 0.1
    assert m.any() and not m.all()
    return m


def brute_boundary(mask):
    """Coordinates of foreground voxels with a background neighbour in the full 3^n box (outside = bg)."""
    padded = np.pad(mask, 1)
    interior = np.ones_like(mask)
    for off in itertools.product((0, 1, 2), repeat=mask.ndim):
        interior &= padded[tuple(slice(o, o + n) for o, n in zip(off, mask.shape))]
    return np.argwhere(mask & ~interior)


def brute_distances(pred, truth, spacing):
    d = cdist(brute_boundary(pred) * np.asarray(spacing), brute_boundary(truth) * np.asarray(spacing))
    a, b = d.min(1), d.min(0)
    return {"hausdorff": max(a.max(), b.max()),
            "hd95": max(np.percentile(a, 95), np.percentile(b, 95)),
            "average_surface_distance": np.concatenate([a, b]).mean()}


def test_overlap_hand_values():
    assert seg.confusion(PRED, TRUTH) == (1, 1, 1, 3)
    expected = dict(dice=0.5, iou=1 / 3, sensitivity=0.5, specificity=0.75, precision=0.5, accuracy=4 / 6,
                    balanced_accuracy=0.625)
    for name, value in expected.items():
        assert getattr(seg, name)(PRED, TRUTH) == pytest.approx(value), name
    assert seg.dice(TRUTH, PRED) == seg.dice(PRED, TRUTH)
    assert seg.sensitivity(TRUTH, PRED) == pytest.approx(0.5)


def test_overlap_jax_inside_jit():
    f = jax.jit(lambda p, t: (seg.dice(p, t), seg.iou(p, t), seg.balanced_accuracy(p, t), seg.confusion(p, t)))
    d, i, b, counts = f(jnp.asarray(PRED), jnp.asarray(TRUTH))
    assert float(d) == pytest.approx(0.5) and float(i) == pytest.approx(1 / 3)
    assert float(b) == pytest.approx(0.625) and [int(c) for c in counts] == [1, 1, 1, 3]
    empty = jnp.zeros((2, 3), bool)
    d, i, _, _ = f(empty, empty)
    assert float(d) == 1.0 and float(i) == 1.0
    assert float(f(empty, jnp.asarray(TRUTH))[0]) == 0.0


def test_point_hausdorff_hand_value_and_symmetry():
    a, b = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    a[0, 0], b[3, 4] = True, True
    assert seg.hausdorff(a, b) == pytest.approx(5.0)
    assert seg.hd95(a, b) == pytest.approx(5.0)
    assert seg.average_surface_distance(a, b) == pytest.approx(5.0)
    assert seg.hausdorff(a, b, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(6.0, 2.0))
    p, t = square((10, 10), (2, 2), (7, 6)), square((10, 10), (1, 3), (5, 9))
    for f in (seg.hausdorff, seg.hd95, seg.average_surface_distance):
        assert f(p, t) == pytest.approx(f(t, p))
        assert f(p, p) == 0.0


def test_anisotropic_shift():
    p = square((10, 10), (2, 2), (6, 6))
    t = np.roll(p, 1, axis=0)
    assert seg.hausdorff(p, t, spacing=(2.0, 1.0)) == pytest.approx(2.0)
    assert seg.hausdorff(p, t, spacing=(1.0, 3.0)) == pytest.approx(1.0)
    v = square((6, 8, 8), (1, 2, 2), (4, 6, 6))
    assert seg.hausdorff(v, np.roll(v, 1, axis=0), spacing=(2.5, 1.0, 1.0)) == pytest.approx(2.5)


@pytest.mark.parametrize("shape,spacing", [((40, 36), (1.0, 1.0)), ((40, 36), (1.5, 0.7)),
                                           ((14, 16, 18), (2.0, 1.0, 0.5))])
def test_surface_metrics_match_brute_force(shape, spacing):
    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        p, t = blob(rng, shape), blob(rng, shape)
        expected = brute_distances(p, t, spacing)
        got = seg.case_metrics(p, t, spacing=spacing)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
        assert got["hd95"] <= got["hausdorff"]


def test_surface_of_border_touching_mask():
    m = np.zeros((5, 5), bool)
    m[:, :3] = True
    # column 2 borders the background; the image border counts as background too, so only (1..3, 1) is interior
    assert seg.surface(m).sum() == 15 - 3


def test_empty_mask_conventions():
    e, m = np.zeros((8, 8), bool), square((8, 8), (2, 2), (5, 5))
    both, one = seg.case_metrics(e, e), seg.case_metrics(e, m)
    assert both["dice"] == both["iou"] == 1.0
    assert both["hausdorff"] == both["hd95"] == both["average_surface_distance"] == 0.0
    assert one["dice"] == one["iou"] == 0.0
    assert one["hausdorff"] == one["hd95"] == one["average_surface_distance"] == math.inf
    assert seg.hausdorff(m, e) == math.inf
    assert math.isnan(seg.sensitivity(m, e)) and math.isnan(seg.precision(e, m))
    assert math.isnan(seg.balanced_accuracy(m, e)) and seg.specificity(m, e) == pytest.approx(55 / 64)
    assert math.isnan(seg.specificity(np.ones((2, 2)), np.ones((2, 2))))
    with pytest.raises(InputError, match="pred: empty mask"):
        seg.surface_distances(e, m)


def test_per_case_and_summarize():
    m = square((8, 8), (2, 2), (5, 5))
    e = np.zeros_like(m)
    shifted = np.roll(m, 1, axis=1)
    pred = np.stack([m, shifted, e, e])[..., None].astype(np.float32)
    truth = np.stack([m, m, m, e])[..., None].astype(np.uint8)
    pc = seg.per_case(pred, truth, spacing=(1.0, 2.0))
    assert set(pc) == set(seg.OVERLAP + seg.SURFACE) and all(v.shape == (4,) for v in pc.values())
    np.testing.assert_allclose(pc["dice"], [1.0, 2 / 3, 0.0, 1.0])
    np.testing.assert_allclose(pc["hausdorff"], [0.0, 2.0, math.inf, 0.0])
    assert math.isnan(pc["sensitivity"][3])
    s = seg.summarize(pc)
    assert s["dice"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4) and s["dice_undefined"] == 0
    assert s["hausdorff"] == pytest.approx(2.0 / 3) and s["hausdorff_undefined"] == 1
    assert s["sensitivity"] == pytest.approx((1 + 2 / 3 + 0) / 3) and s["sensitivity_undefined"] == 1
    assert math.isnan(seg.summarize({"x": [math.nan, math.inf]})["x"])
    vol = np.stack([square((4, 6, 6), (1, 1, 1), (3, 4, 4))] * 2)
    assert seg.per_case(vol, vol, spacing=(3.0, 1.0, 1.0))["hd95"].tolist() == [0.0, 0.0]


def test_seed_batch_metrics_conventions():
    m = square((8, 8), (2, 2), (5, 5))
    e = np.zeros_like(m)
    # case 0: truth only; case 1: pred only, at the same place -> per case inf, seed 1.0 (batch index)
    pred, truth = np.stack([e, m]), np.stack([m, e])
    assert seg.seed_batch_metrics(pred, truth)["hausdorff"] == pytest.approx(1.0)
    assert seg.per_case(pred, truth)["hausdorff"].tolist() == [math.inf, math.inf]
    assert seg.seed_batch_metrics(np.stack([e, e]), truth)["hausdorff"] == 0.0
    chunked = seg.seed_batch_metrics(pred, truth, batch_size=1)
    assert chunked["hausdorff"] == 0.0 and chunked["dice"] == 0.0
    rng = np.random.default_rng(0)
    p, t = rng.random((3, 12, 12, 1)) > 0.8, rng.random((3, 12, 12, 1)) > 0.7
    d = cdist(np.argwhere(p), np.argwhere(t))
    got = seg.seed_batch_metrics(p, t)
    assert got["hausdorff"] == pytest.approx(max(d.min(0).max(), d.min(1).max()))
    assert got["dice"] == pytest.approx(seg.dice(p, t)) and got["iou"] == pytest.approx(seg.iou(p, t))


def test_bad_input():
    m = square((6, 6), (1, 1), (4, 4))
    with pytest.raises(InputError, match="pred: non-binary"):
        seg.dice(m * 2, m)
    with pytest.raises(InputError, match="truth: non-binary"):
        seg.hausdorff(m, m * 0.5)
    with pytest.raises(InputError, match="non-binary"):
        seg.iou(np.full((2, 2), np.nan), np.ones((2, 2)))
    with pytest.raises(InputError, match="shapes"):
        seg.dice(m, m[:5])
    with pytest.raises(InputError, match="spacing"):
        seg.hd95(m, m, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        seg.hd95(m, m, spacing=(1.0, 0.0))
    with pytest.raises(InputError, match="2-D or 3-D"):
        seg.hausdorff(np.ones((2, 2, 2, 2)), np.ones((2, 2, 2, 2)))
    with pytest.raises(InputError, match="batch_size"):
        seg.seed_batch_metrics(m[None], m[None], batch_size=0)
