"""Image-quality metrics against scikit-image / scipy references, and 3D feature distances."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jaxdiff.errors import InputError
from jaxdiff.evaluators import features3d
from jaxdiff.metrics import image_quality as iq


def _structured(shape, seed):
    """Smooth blobs plus a sharp edge and mild noise in [0, 1], (B, *spatial, C)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[1:-1]], indexing="ij")
    base = np.exp(-sum(g ** 2 for g in grids) * 2.0) + 0.3 * (grids[0] > 0.2)
    x = base[None, ..., None] * rng.uniform(0.5, 1.0, (shape[0], *([1] * (len(shape) - 2)), shape[-1]))
    return np.clip(x + 0.02 * rng.standard_normal(shape), 0, 1).astype(np.float32)


CASES = {  # name: (pred, target, data_range)
    "random2d": (lambda r: r.random((2, 24, 20, 3)), 1.0),
    "structured2d_pm1": (lambda r: 2 * _structured((2, 26, 22, 2), 1) - 1, 2.0),
    "random3d_raw_intensities": (lambda r: 1000 + 50 * r.random((2, 14, 16, 12, 1)), 50.0),  # float32 offsets
    "structured3d": (lambda r: _structured((1, 16, 13, 15, 2), 2), 1.0),
}


def _pair(name):
    make, data_range = CASES[name]
    rng = np.random.default_rng(0)
    x = np.asarray(make(rng), np.float32)
    y = (x + 0.1 * data_range * rng.standard_normal(x.shape)).astype(np.float32)
    return x, y, data_range


def _sk_ssim(x, y, data_range):
    return np.array([structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=data_range,
                                           gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                           channel_axis=-1) for a, b in zip(x, y)])


@pytest.mark.parametrize("name", list(CASES))
def test_ssim_psnr_match_skimage(name):
    x, y, data_range = _pair(name)
    np.testing.assert_allclose(iq.ssim(x, y, data_range), _sk_ssim(x, y, data_range), atol=1e-4)
    sk_psnr = [peak_signal_noise_ratio(a, b, data_range=data_range) for a, b in zip(x, y)]
    np.testing.assert_allclose(iq.psnr(x, y, data_range), sk_psnr, atol=1e-3)
    np.testing.assert_allclose(iq.dssim(x, y, data_range), (1 - _sk_ssim(x, y, data_range)) / 2, atol=1e-4)


def test_identical_inputs_and_ordering():
    x, y, _ = _pair("structured3d")
    np.testing.assert_allclose(iq.ssim(x, x), 1.0, atol=1e-6)
    np.testing.assert_allclose(iq.dssim(x, x), 0.0, atol=1e-6)
    np.testing.assert_allclose(iq.ms_ssim(x, x), 1.0, atol=1e-6)
    assert np.all(np.isposinf(iq.psnr(x, x)))
    worse = np.clip(x + 0.3 * (y - x) / 0.1, 0, 1)
    assert np.all(iq.ssim(x, worse) < iq.ssim(x, y))
    assert np.all(iq.ms_ssim(x, worse) < iq.ms_ssim(x, np.clip(y, 0, 1)))   # MS-SSIM takes [0, data_range]
    assert np.all(iq.psnr(x, worse) < iq.psnr(x, y))


def test_jit_matches_eager_and_bad_shapes():
    x, y, data_range = _pair("random2d")
    inside_jit = jax.jit(lambda a, b: iq.ms_ssim(a, b, data_range, weights=(1.0,)))  # usable in a jitted caller
    np.testing.assert_allclose(inside_jit(x, y), iq.ssim(x, y, data_range), atol=1e-6)
    with pytest.raises(InputError):
        iq.ssim(x, y[:, :10])
    with pytest.raises(InputError):
        iq.ssim(x[:, :8], y[:, :8])  # smaller than the 11-tap window
    with pytest.raises(InputError):
        iq.psnr(x[0], y[0])


def _reference_ms_ssim(x, y, weights, data_range=1.0):
    """Wang et al. 2003 on one (H, W) image pair with scipy Gaussian filtering and a 5-pixel crop."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = 1.0
    for j, w in enumerate(weights):
        f = [ndimage.gaussian_filter(a, 1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]
             for a in (x, y, x * x, y * y, x * y)]
        vx, vy, vxy = f[2] - f[0] ** 2, f[3] - f[1] ** 2, f[4] - f[0] * f[1]
        cs = (2 * vxy + c2) / (vx + vy + c2)
        lum = (2 * f[0] * f[1] + c1) / (f[0] ** 2 + f[1] ** 2 + c1)
        out *= max(np.mean(lum * cs if j == len(weights) - 1 else cs), 0.0) ** w
        h, wd = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        x, y = (a[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean((1, 3)) for a in (x, y))
    return out


def test_ms_ssim_against_reference_and_scales():
    rng = np.random.default_rng(3)
    x = rng.random((2, 23, 22, 2)).astype(np.float32)  # two scales fit (sides >= 22); pooling drops a row
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    w = np.array(iq.MS_SSIM_WEIGHTS[:2]) / sum(iq.MS_SSIM_WEIGHTS[:2])
    ref = [np.mean([_reference_ms_ssim(x[b, ..., c].astype(np.float64), y[b, ..., c].astype(np.float64), w)
                    for c in range(x.shape[-1])]) for b in range(len(x))]
    np.testing.assert_allclose(iq.ms_ssim(x, y), ref, atol=1e-4)
    np.testing.assert_allclose(iq.ms_ssim(x, y, weights=(1.0,)), iq.ssim(x, y), atol=1e-6)
    assert [iq.num_scales((n, n, n)) for n in (11, 32, 64, 175, 176, 512)] == [1, 2, 3, 4, 5, 5]
    with pytest.raises(InputError):
        iq.ms_ssim(x, y, weights=iq.MS_SSIM_WEIGHTS)


def test_gradient_sharpness():
    x, _, _ = _pair("structured3d")
    grads = np.gradient(x.astype(np.float64), axis=(1, 2, 3))
    mag = np.sqrt(sum(g ** 2 for g in grads))[:, 1:-1, 1:-1, 1:-1]
    np.testing.assert_allclose(iq.gradient_sharpness(x), mag.mean(axis=(1, 2, 3, 4)), rtol=1e-5)
    np.testing.assert_allclose(iq.gradient_sharpness(np.ones((1, 8, 8, 1))), 0.0)
    blurred = ndimage.gaussian_filter(x, (0, 1.5, 1.5, 1.5, 0))
    assert np.all(iq.gradient_sharpness(blurred) < iq.gradient_sharpness(x))


@pytest.fixture(scope="module")
def extractor():
    return features3d.get_extractor(features=(4, 8, 8), batch_size=4)  # 40 features: quick FID


def _volumes(n, seed, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.standard_normal((n, 12, 12, 12, 1)), (0, 1, 1, 1, 0))
    return (scale * smooth / smooth.std() + offset).astype(np.float32)


def test_feature_extractor_deterministic_and_pluggable(extractor):
    v = _volumes(5, 0)
    f = extractor(v)
    assert f.shape == (5, 40) and np.all(np.isfinite(f)) and f.std(0).max() > 0
    np.testing.assert_allclose(features3d.get_extractor(features=(4, 8, 8), batch_size=4)(v), f, rtol=1e-6)
    np.testing.assert_allclose(extractor(v[:2]), f[:2], rtol=1e-5)  # padded chunk, same values
    mine = lambda vols: vols.reshape(len(vols), -1)[:, :7]  # noqa: E731
    assert features3d.get_extractor(mine) is mine
    with pytest.raises(InputError):
        features3d.get_extractor("medicalnet")


def test_distances(extractor):
    real, same, other = _volumes(8, 1), _volumes(8, 2), _volumes(8, 3, scale=0.5, offset=0.5)
    feats = {id(v): extractor(v) for v in (real, same, other)}
    cached = lambda v: feats[id(v)]  # noqa: E731  (each set's features computed once)
    near = features3d.distance(real, same, cached, kind="mmd")
    far = features3d.distance(real, other, cached, kind="mmd")
    assert far > 0.5 and near < 0.2 * far
    assert features3d.distance(real, other, cached, kind="fid") > features3d.distance(real, same, cached, kind="fid")
    assert abs(features3d.distance(real, real, cached, kind="fid")) < 1e-3
    assert features3d.default_extractor(1)(real[:3]).shape == (3, 240)  # default extractor end to end
    assert features3d.distance(real[:4], other[:4]) > features3d.distance(real[:4], same[:4])
    with pytest.raises(InputError):
        features3d.distance(real, same, cached, kind="kid")


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0]  # rotation-invariant: rotate both
    got = features3d.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    singular = np.zeros((3, 3))
    assert abs(features3d.frechet_distance(np.zeros(3), singular, np.zeros(3), singular)) < 1e-5


def test_extractor_weights_file(tmp_path):
    module = features3d.RandomConv3DEncoder((4, 8))
    template = features3d._random_conv3d_params(module, 1, None, seed=5)
    path = features3d.save_weights(jax.tree_util.tree_map(lambda p: p * 2.0, template), str(tmp_path / "w.msgpack"))
    v = _volumes(2, 4)
    random_f = features3d.get_extractor(features=(4, 8), seed=5)(v)
    loaded_f = features3d.get_extractor(weights=path, features=(4, 8))(v)
    assert loaded_f.shape == (2, 24) and not np.allclose(loaded_f, random_f)
    with pytest.raises(InputError, match="do not match"):
        features3d.get_extractor(weights=path, features=(4, 16))
    (tmp_path / "bad.msgpack").write_bytes(b"not msgpack")
    for bad in (str(tmp_path / "bad.msgpack"), str(tmp_path / "missing.msgpack")):
        with pytest.raises(InputError, match="msgpack"):
            features3d.get_extractor(weights=bad)
