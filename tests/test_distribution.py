"""FID, KID and Inception Score against direct NumPy formulas and cases with known answers; the in-project
feature extractor and the LPIPS-style perceptual distance."""
from __future__ import annotations

import numpy as np
import pytest

from jaxdiff.errors import InputError
from jaxdiff.evaluators import features
from jaxdiff.metrics import distribution


def gaussian_samples(n, mean, std, seed):
    """n samples whose sample mean and (unbiased) covariance are exactly `mean` and diag(std^2)."""
    z = np.random.default_rng(seed).normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten: cov(z) = I
    return mean + z * std


def test_fid_known_cases():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 6)) @ rng.normal(size=(6, 6))
    assert abs(distribution.fid(a, a)) < 1e-8 * np.trace(np.cov(a, rowvar=False))
    delta = rng.normal(size=6)
    assert distribution.fid(a, a + delta) == pytest.approx(delta @ delta, rel=1e-6)  # equal covariances
    mu1, mu2, s1, s2 = np.zeros(5), np.arange(5.0), np.linspace(0.5, 2, 5), np.linspace(3, 1, 5)
    analytic = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)  # diagonal Gaussians: tr(S1+S2-2 sqrt(S1 S2))
    got = distribution.fid(gaussian_samples(40, mu1, s1, 1), gaussian_samples(50, mu2, s2, 2))
    assert got == pytest.approx(analytic, rel=1e-6)


def test_fid_matches_eigenvalue_formula():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 8)), 0.5 + 2.0 * rng.normal(size=(70, 8)) @ rng.normal(size=(8, 8))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr((S1 S2)^(1/2)) = sum of sqrt of the (real, non-negative) eigenvalues of S1 S2.
    tr_sqrt = np.sum(np.sqrt(np.abs(np.linalg.eigvals(s1 @ s2))))
    want = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert distribution.fid(a, b) == pytest.approx(want, rel=1e-8)


def direct_kid(x, y):
    """Unbiased MMD^2 with k(u, v) = (u.v/d + 1)^3, with explicit loops over pairs."""
    d = x.shape[1]
    k = lambda u, v: (u @ v / d + 1.0) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_full_set_matches_direct_formula_and_detects_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(12, 4)), rng.normal(size=(12, 4)) + 0.3
    mean, std = distribution.kid(a, b, num_subsets=3, subset_size=100)  # subsets = permutations of all rows
    assert mean == pytest.approx(direct_kid(a, b), rel=1e-10) and std < 1e-12
    same = rng.normal(size=(400, 4))
    other = rng.normal(size=(400, 4))
    null_mean, null_std = distribution.kid(same, other, num_subsets=20, subset_size=100, seed=0)
    shift_mean, _ = distribution.kid(same, other + 1.0, num_subsets=20, subset_size=100, seed=0)
    assert abs(null_mean) < 0.05 * shift_mean and null_std > 0
    # Identical sets: xx = yy = off-diagonal mean O, xy = ((m-1) O + diagonal mean D) / m, so KID = 2 (O - D) / m,
    # slightly negative (the unbiased estimate of 0), and small next to the shifted sets.
    kern = (same @ same.T / 4 + 1) ** 3
    diag, offdiag = np.trace(kern) / 400, (kern.sum() - np.trace(kern)) / (400 * 399)
    identical = distribution.kid(same, same, num_subsets=2, subset_size=400)[0]
    assert identical == pytest.approx(2 * (offdiag - diag) / 400, rel=1e-9) and abs(identical) < 0.05 * shift_mean
    assert distribution.kid(same, other, num_subsets=20, subset_size=100, seed=0) == (null_mean, null_std)


def test_inception_score_known_cases_and_formula():
    k = 5
    confident = np.eye(k)[np.arange(100) % k] * 50.0  # one-hot, every class equally often in each split
    assert distribution.inception_score(confident, splits=10)[0] == pytest.approx(k, rel=1e-6)
    assert distribution.inception_score(np.zeros((30, k)), splits=3) == pytest.approx((1.0, 0.0))
    logits = np.random.default_rng(3).normal(size=(40, 7)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = [np.exp(np.mean(np.sum(c * np.log(c / c.mean(0)), 1))) for c in np.split(p, 4)]
    assert distribution.inception_score(logits, splits=4) == pytest.approx((np.mean(scores), np.std(scores)))


def test_bad_feature_shapes_raise_input_error():
    with pytest.raises(InputError):
        distribution.fid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(InputError):
        distribution.kid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(InputError):
        distribution.inception_score(np.zeros((3, 4)), splits=10)


def test_in_project_extractor():
    extractor = features.get_extractor("in_project", batch_size=4)
    assert "not Inception" in extractor.description
    grey = np.random.default_rng(4).uniform(-1, 1, size=(6, 16, 16, 1)).astype(np.float32)
    feats = extractor(grey)  # 6 images in padded batches of 4
    assert feats.shape == (6, 480) and np.all(np.isfinite(feats)) and np.std(feats) > 1e-3
    again = features.get_extractor("in_project", batch_size=4)(np.repeat(grey[:4], 3, -1))
    np.testing.assert_allclose(feats[:4], again, rtol=1e-5, atol=1e-6)  # fixed seed; grey == tiled RGB
    assert "logits" not in extractor.outputs(grey)
    noisy = np.clip(grey + 0.5 * np.random.default_rng(5).normal(size=grey.shape), -1, 1)
    shift = np.abs(extractor(noisy) - feats).mean()  # (FID of 480-d features on 6 images: sqrtm is slow)
    assert shift > 0.05 * np.abs(feats).mean()


def test_perceptual_distance():
    extractor = features.get_extractor("in_project")
    rng = np.random.default_rng(6)
    a = rng.uniform(-1, 1, size=(3, 16, 16, 1)).astype(np.float32)
    b = np.clip(a + 0.1 * rng.normal(size=a.shape), -1, 1).astype(np.float32)
    c = np.clip(a + 0.8 * rng.normal(size=a.shape), -1, 1).astype(np.float32)
    d_same, d_small, d_big = (features.perceptual_distance(a, x, extractor) for x in (a, b, c))
    assert d_same.shape == (3,) and np.all(d_same < 1e-6)
    assert np.all((0 < d_small) & (d_small < d_big) & (d_big <= 4))
    # A plain callable giving one map: the value is the mean squared difference of unit vectors.
    direct = np.mean(np.sum((a / np.abs(a) - b / np.abs(b)) ** 2, -1), axis=(1, 2))
    np.testing.assert_allclose(features.perceptual_distance(a, b, lambda x: [x]), direct, rtol=1e-4, atol=1e-6)


def test_extractor_errors():
    with pytest.raises(InputError, match="pt_inception-2015-12-05-6726825d.pth"):
        features.get_extractor("inception")
    with pytest.raises(InputError, match="nope.pth"):
        features.get_extractor("inception", weights="/nonexistent/nope.pth")
    with pytest.raises(InputError, match="unknown"):
        features.get_extractor("vgg")
    with pytest.raises(InputError):
        features.get_extractor()(np.zeros((2, 16, 16, 4)))
