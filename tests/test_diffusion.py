"""Diffusion core: schedules vs closed forms, the forward process and parametrisations, losses, and the
samplers against an analytic denoiser that is exact for Gaussian data."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import gaussian, samplers, schedules
from jaxdiff.errors import InputError

MU = np.array([1.5, -0.5])   # data mean per dimension
STD = 0.5                    # data standard deviation
N = 4096


def gaussian_eps(sched, mu=MU, std=STD):
    """Exact E[eps | x_t] for x0 ~ N(mu, std^2 I): x_t ~ N(sqrt(a) mu, a std^2 + 1 - a) and
    Cov(eps, x_t) = sqrt(1 - a), so eps_hat = sqrt(1 - a) (x_t - sqrt(a) mu) / (a std^2 + 1 - a).
    `mu` (D,) or, if cond is given, cond["mu"] (B, D)."""
    def fn(x, t, cond):
        a = sched.alphas_cumprod[t][:, None]
        m = mu if cond is None else cond["mu"]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * m) / (a * std ** 2 + 1 - a)
    return fn


def affine_chain_moments(sched, steps, prev, kind, eta=0.0, variance="beta"):
    """Exact output mean (D,) and variance of a sampler driven by `gaussian_eps`, in float64.

    Every step is affine in x plus Gaussian noise (x' = A x + b + sigma z), so the moments follow the
    recursion m' = A m + b, v' = A^2 v + sigma^2 from x_T ~ N(0, 1)."""
    ac = np.asarray(sched.alphas_cumprod, np.float64)
    betas = np.asarray(sched.betas, np.float64)
    m, v = np.zeros(2), 1.0
    for t, tp in zip(steps, prev):
        a = ac[t]
        k = math.sqrt(1 - a) / (a * STD ** 2 + 1 - a)
        c_eps, d_eps = k, -k * math.sqrt(a) * MU                       # eps_hat = c x + d
        c_x0, d_x0 = (1 - math.sqrt(1 - a) * k) / math.sqrt(a), math.sqrt(1 - a) * k * MU
        a_prev = ac[tp] if tp >= 0 else 1.0
        if kind == "ddpm":
            coef1 = betas[t] * math.sqrt(a_prev) / (1 - a)
            coef2 = (1 - a_prev) * math.sqrt(1 - betas[t]) / (1 - a)
            A, b = coef1 * c_x0 + coef2, coef1 * d_x0
            var = betas[t] if variance == "beta" else betas[t] * (1 - a_prev) / (1 - a)
            sigma2 = var if t > 0 else 0.0
        else:
            sigma2 = eta ** 2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
            dir_coef = math.sqrt(max(1 - a_prev - sigma2, 0.0))
            A = math.sqrt(a_prev) * c_x0 + dir_coef * c_eps
            b = math.sqrt(a_prev) * d_x0 + dir_coef * d_eps
        m, v = A * m + b, A * A * v + sigma2
    return m, v


@pytest.fixture(scope="module")
def sched200():
    return schedules.get("cosine", 200)


# ----------------------------------------------------------------------------------------- schedules

def test_linear_and_scaled_linear_betas():
    s = schedules.get("linear", 1000)
    np.testing.assert_allclose(s.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-6)
    assert s.num_timesteps == 1000 and s.betas.dtype == jnp.float32
    s3 = schedules.get("linear", 2000, beta_start=0.00085, beta_end=0.012)
    np.testing.assert_allclose([s3.betas[0], s3.betas[-1]], [0.00085, 0.012], rtol=1e-6)
    sl = schedules.get("scaled_linear", 10)
    np.testing.assert_allclose(sl.betas, np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 10) ** 2, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-5)


def test_cosine_matches_closed_form_with_clipping():
    T, s = 100, 0.008
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
    sched = schedules.get("cosine", T)
    ac = np.asarray(sched.alphas_cumprod)
    # Unclipped steps follow f(t + 1) / f(0) exactly; the last beta is clipped at 0.999.
    np.testing.assert_allclose(ac[:-1], f(np.arange(1, T)) / f(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sched.betas[-1], 0.999, rtol=1e-6)
    np.testing.assert_allclose(ac[-1], ac[-2] * 0.001, rtol=1e-4)
    assert float(sched.betas.max()) <= 0.999 + 1e-7


def test_cosine_angle_schedule():
    T = 50
    sched = schedules.get("cosine_angle", T)
    angle = np.arccos(0.95) + np.arange(1, T + 1) / T * (np.arccos(0.02) - np.arccos(0.95))
    np.testing.assert_allclose(sched.alphas_cumprod, np.cos(angle) ** 2, rtol=1e-5, atol=1e-7)
    signal, noise = schedules.cosine_angle_rates(jnp.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(signal, [0.95, np.cos(angle[T // 2 - 1]), 0.02], rtol=1e-5)
    np.testing.assert_allclose(signal ** 2 + noise ** 2, 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "cosine_angle"])
def test_schedule_invariants(name):
    s = schedules.get(name, 300)
    ac = np.asarray(s.alphas_cumprod)
    assert np.all(np.diff(ac) < 0) and 0 < ac[-1] < ac[0] < 1
    np.testing.assert_allclose(s.alphas_cumprod_prev[1:], ac[:-1])
    assert s.alphas_cumprod_prev[0] == 1.0 and s.posterior_variance[0] == 0.0
    np.testing.assert_allclose(s.posterior_log_variance_clipped[0], np.log(s.posterior_variance[1]), rtol=1e-6)
    for field in ("betas", "sqrt_one_minus_alphas_cumprod", "posterior_mean_coef2"):
        assert getattr(s, field).shape == (300,)
    leaves = jax.tree.leaves(s)
    assert len(leaves) == 10 and all(leaf.dtype == jnp.float32 for leaf in leaves)


def test_schedule_errors_name_the_key():
    with pytest.raises(InputError, match="diffusion.schedule"):
        schedules.get("sigmoid", 10)
    with pytest.raises(InputError, match="diffusion.beta_start"):
        schedules.get("cosine", 10, beta_start=0.1)


# ------------------------------------------------------------------------ forward process and losses

def test_q_sample_statistics():
    sched = schedules.get("linear", 1000)
    t = jnp.full((N,), 300, jnp.int32)
    x0 = jnp.full((N, 2), 2.0)
    xt = gaussian.q_sample(sched, x0, t, jax.random.normal(jax.random.PRNGKey(0), (N, 2)))
    a = float(sched.alphas_cumprod[300])
    np.testing.assert_allclose(np.mean(xt), 2.0 * math.sqrt(a), atol=0.05)
    np.testing.assert_allclose(np.var(xt), 1 - a, rtol=0.05)


@pytest.mark.parametrize("shape", [(3, 4, 4, 2), (3, 2, 4, 4, 1)])
def test_parametrisations_round_trip(shape):
    sched = schedules.get("cosine", 100)
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    x0, noise = jax.random.normal(k1, shape), jax.random.normal(k2, shape)
    t = jnp.array([0, 50, 99], jnp.int32)
    xt = gaussian.q_sample(sched, x0, t, noise)
    v = gaussian.v_target(sched, x0, t, noise)
    tol = dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(gaussian.eps_to_x0(sched, xt, t, noise)[:2], x0[:2], **tol)  # t=99: x0 ill-posed
    np.testing.assert_allclose(gaussian.x0_to_eps(sched, xt, t, x0), noise, **tol)
    np.testing.assert_allclose(gaussian.v_to_x0(sched, xt, t, v), x0, **tol)
    np.testing.assert_allclose(gaussian.v_to_eps(sched, xt, t, v), noise, **tol)
    for prediction in gaussian.PREDICTIONS:
        target = gaussian.training_target(sched, x0, noise, t, prediction)
        x0_hat, eps_hat = gaussian.to_x0_eps(sched, xt, t, target, prediction)
        np.testing.assert_allclose(eps_hat, noise, **tol)
        np.testing.assert_allclose(x0_hat[:2], x0[:2], **tol)


def test_posterior_mean_variance_matches_direct_formula():
    sched = schedules.get("linear", 100)
    x0, xt = jnp.ones((2, 3, 3, 1)), jnp.full((2, 3, 3, 1), 0.5)
    t = jnp.array([0, 40], jnp.int32)
    mean, var, log_var = gaussian.q_posterior_mean_variance(sched, x0, xt, t)
    b = np.linspace(1e-4, 0.02, 100)
    ac = np.cumprod(1 - b)
    a, a_prev = ac[40], ac[39]
    expected = math.sqrt(a_prev) * b[40] / (1 - a) * 1.0 + math.sqrt(1 - b[40]) * (1 - a_prev) / (1 - a) * 0.5
    np.testing.assert_allclose(mean[1], np.full((3, 3, 1), expected), rtol=1e-5)
    np.testing.assert_allclose(mean[0], x0[0], rtol=1e-5)                 # t = 0: the mean is x0
    assert var.shape == (2, 1, 1, 1) and float(var[0, 0, 0, 0]) == 0.0
    np.testing.assert_allclose(var[1].ravel(), [b[40] * (1 - a_prev) / (1 - a)], rtol=1e-5)
    np.testing.assert_allclose(np.exp(log_var[1]).ravel(), var[1].ravel(), rtol=1e-5)


def test_loss_kinds_and_noise_recovery():
    sched = schedules.get("linear", 100)
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    x0, noise = jax.random.normal(k1, (4, 4, 4, 1)), jax.random.normal(k2, (4, 4, 4, 1))
    t = jnp.array([1, 10, 50, 99], jnp.int32)
    xt = gaussian.q_sample(sched, x0, t, noise)
    assert np.allclose(gaussian.loss(sched, noise, x0, noise, t, xt), 0.0)
    pred = noise + 0.5
    np.testing.assert_allclose(gaussian.loss(sched, pred, x0, noise, t, xt), 0.25, rtol=1e-5)
    np.testing.assert_allclose(gaussian.loss(sched, pred, x0, noise, t, xt, kind="l1"), 0.5, rtol=1e-5)
    np.testing.assert_allclose(gaussian.loss(sched, pred, x0, None, t, xt), 0.25, rtol=1e-3)
    with pytest.raises(InputError, match="diffusion.loss"):
        gaussian.loss(sched, pred, x0, noise, t, xt, kind="huber")


def test_min_snr_weights_equalise_prediction_types():
    """For the same x0 error, the min-SNR-weighted MSE is min(SNR, gamma) * x0-MSE for every type."""
    sched, gamma = schedules.get("cosine", 1000), 5.0
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    x0, noise = jax.random.normal(k1, (4, 8)), jax.random.normal(k2, (4, 8))
    x0_hat = x0 + 0.1 * jax.random.normal(k3, (4, 8))
    t = jnp.array([5, 100, 500, 990], jnp.int32)
    xt = gaussian.q_sample(sched, x0, t, noise)
    eps_hat = gaussian.x0_to_eps(sched, xt, t, x0_hat)
    preds = {"x0": x0_hat, "eps": eps_hat, "v": gaussian.v_target(sched, x0_hat, t, eps_hat)}
    snr = np.asarray(gaussian.snr(sched, t))
    expected = np.minimum(snr, gamma) * np.mean((np.asarray(x0_hat) - np.asarray(x0)) ** 2, axis=1)
    assert snr[0] > gamma > snr[-1]                                      # both sides of the clip
    for prediction, pred in preds.items():
        got = gaussian.loss(sched, pred, x0, noise, t, xt, prediction=prediction, min_snr_gamma=gamma)
        np.testing.assert_allclose(got, expected, rtol=2e-3, err_msg=prediction)
    np.testing.assert_allclose(gaussian.min_snr_weight(sched, t, "eps", gamma), np.minimum(snr, gamma) / snr, rtol=1e-5)


# --------------------------------------------------------------------------------------------- samplers

def test_ddim_timesteps():
    np.testing.assert_array_equal(samplers.ddim_timesteps(1000, 50), np.round(np.linspace(0, 999, 50)))
    q = samplers.ddim_timesteps(1000, 10, "quadratic")
    np.testing.assert_array_equal(q, np.floor(np.linspace(0, np.sqrt(800), 10) ** 2))
    with pytest.raises(InputError, match="diffusion.sample_steps"):
        samplers.ddim_timesteps(10, 20)


def _moments_close(x, m, v):
    """Empirical mean / variance of x (N, 2) vs exact ones, within ~4 standard errors."""
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(x.mean(0), m, atol=4 * math.sqrt(v / len(x)))
    np.testing.assert_allclose(x.var(0), v, rtol=4 * math.sqrt(2 / len(x)))


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_matches_exact_chain_moments(sched200, variance):
    x = samplers.ddpm_sample(gaussian_eps(sched200), sched200, (N, 2), jax.random.PRNGKey(4), variance=variance)
    steps = np.arange(199, -1, -1)
    _moments_close(x, *affine_chain_moments(sched200, steps, steps - 1, "ddpm", variance=variance))


@pytest.mark.parametrize("eta,spacing", [(0.0, "uniform"), (1.0, "uniform"), (0.5, "quadratic")])
def test_ddim_matches_exact_chain_moments(sched200, eta, spacing):
    x = samplers.ddim_sample(gaussian_eps(sched200), sched200, (N, 2), jax.random.PRNGKey(5), num_steps=40,
                             eta=eta, spacing=spacing)
    ts = samplers.ddim_timesteps(200, 40, spacing)[::-1]
    _moments_close(x, *affine_chain_moments(sched200, ts, np.append(ts[1:], -1), "ddim", eta=eta))


@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("ddim", dict(eta=0.0, num_steps=100)),
                                        ("ddim", dict(eta=1.0, num_steps=100))])
def test_samplers_reproduce_gaussian_data(sched200, sampler, kw):
    fn = samplers.ddpm_sample if sampler == "ddpm" else samplers.ddim_sample
    x = np.asarray(fn(gaussian_eps(sched200), sched200, (N, 2), jax.random.PRNGKey(6), **kw))
    np.testing.assert_allclose(x.mean(0), MU, atol=0.05)
    np.testing.assert_allclose(x.var(0), STD ** 2, rtol=0.15)


def test_x0_and_v_predictions_sample_like_eps(sched200):
    eps_fn = gaussian_eps(sched200)
    x0_fn = lambda x, t, c: gaussian.eps_to_x0(sched200, x, t, eps_fn(x, t, c))
    v_fn = lambda x, t, c: gaussian.v_target(sched200, x0_fn(x, t, c), t, eps_fn(x, t, c))
    key, shape = jax.random.PRNGKey(7), (64, 2)
    ref = samplers.ddim_sample(eps_fn, sched200, shape, key, num_steps=20)
    for prediction, fn in (("x0", x0_fn), ("v", v_fn)):
        got = samplers.ddim_sample(fn, sched200, shape, key, num_steps=20, prediction=prediction)
        np.testing.assert_allclose(got, ref, atol=2e-3, err_msg=prediction)


def test_ddim_eta0_is_deterministic_given_x_T(sched200):
    fn, shape = gaussian_eps(sched200), (16, 2)
    run = functools.partial(samplers.ddim_sample, fn, sched200, shape, num_steps=10)
    a, b, c = run(key=jax.random.PRNGKey(0)), run(key=jax.random.PRNGKey(0)), run(key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    x_T = jax.random.normal(jax.random.PRNGKey(9), shape)
    np.testing.assert_array_equal(run(key=jax.random.PRNGKey(0), x_T=x_T), run(key=jax.random.PRNGKey(1), x_T=x_T))
    stochastic = functools.partial(run, x_T=x_T, eta=1.0)
    assert not np.allclose(stochastic(key=jax.random.PRNGKey(0)), stochastic(key=jax.random.PRNGKey(1)))


def test_clip_x0_bounds_the_result(sched200):
    x = samplers.ddpm_sample(gaussian_eps(sched200), sched200, (256, 2), jax.random.PRNGKey(8), clip_x0=1.0)
    assert float(np.max(np.abs(x))) <= 1.0 + 1e-5 and float(np.max(x[:, 0])) > 0.99  # mu_0 = 1.5 gets clipped


def test_guidance_combines_cond_and_uncond_in_one_call(sched200):
    """eps_hat is affine in mu, so guidance with scale s, cond mu_c and the zero uncond equals the plain
    conditional sampler with mu = s mu_c; scale 1 equals the conditional model."""
    fn, key, b = gaussian_eps(sched200), jax.random.PRNGKey(10), 32
    calls = []

    def counting_fn(x, t, cond):
        calls.append(x.shape)
        return fn(x, t, cond)

    cond = {"mu": jnp.tile(jnp.asarray(MU, jnp.float32), (b, 1))}
    for s in (1.0, 2.5):
        calls.clear()
        guided = samplers.ddim_sample(counting_fn, sched200, (b, 2), key, num_steps=10, cond=cond, guidance_scale=s)
        assert calls == [(2 * b, 2)]                                     # traced once, batch [cond; uncond]
        plain = samplers.ddim_sample(fn, sched200, (b, 2), key, num_steps=10, cond={"mu": s * cond["mu"]})
        np.testing.assert_allclose(guided, plain, rtol=1e-4, atol=1e-3)
    uncond = {"mu": jnp.ones_like(cond["mu"])}
    g = samplers.ddpm_sample(fn, sched200, (b, 2), key, cond=cond, uncond=uncond, guidance_scale=0.0)
    np.testing.assert_allclose(g, samplers.ddpm_sample(fn, sched200, (b, 2), key, cond=uncond), atol=1e-4)


def test_trajectory_shapes(sched200):
    fn, key = gaussian_eps(sched200), jax.random.PRNGKey(11)
    x, traj = samplers.ddim_sample(fn, sched200, (4, 2), key, num_steps=12, return_trajectory=True)
    assert traj.shape == (12, 4, 2)
    np.testing.assert_array_equal(traj[-1], x)
    x, traj, pred_x0 = samplers.ddpm_sample(fn, sched200, (4, 2), key, return_trajectory=True, return_pred_x0=True)
    assert traj.shape == pred_x0.shape == (200, 4, 2)
    np.testing.assert_allclose(pred_x0[-1], x, atol=1e-5)               # the t = 0 step returns x0_hat


def test_samplers_jit_3d_and_single_scan():
    sched = schedules.get("linear", 50)
    fn = lambda x, t, cond: 0.1 * x * (t[:, None, None, None, None] / 50.0)
    shape, key = (2, 4, 4, 4, 1), jax.random.PRNGKey(12)
    for sample in (functools.partial(samplers.ddpm_sample, fn, shape=shape),
                   functools.partial(samplers.ddim_sample, fn, shape=shape, num_steps=8, eta=0.3)):
        jitted = jax.jit(sample)(sched=sched, key=key)
        assert jitted.shape == shape and bool(jnp.all(jnp.isfinite(jitted)))
        np.testing.assert_allclose(jitted, sample(sched=sched, key=key), rtol=1e-5, atol=1e-5)
        jaxpr = jax.make_jaxpr(lambda k: sample(sched=sched, key=k))(key)
        assert [e.primitive.name for e in jaxpr.eqns].count("scan") == 1
