"""DPM-Solver++ (Lu et al. 2022) in the scan sampler: exact moments on Gaussian data against the exact
probability-flow ODE, log-SNR vs uniform spacing, eps / x0 / v agreement, guidance, the task's config path."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff import tasks
from jaxdiff.config import parse
from jaxdiff.diffusion import gaussian, samplers, schedules
from jaxdiff.errors import InputError

MU = np.array([1.5, -0.5])   # data mean per dimension
STD = 0.5                    # data standard deviation


def gaussian_eps(sched, std=STD):
    """Exact E[eps | x_t] for x0 ~ N(mu, std^2 I) (mu = MU, or cond["mu"] (B, D) when cond is given)."""
    def fn(x, t, cond):
        a = sched.alphas_cumprod[t][:, None]
        m = MU if cond is None else cond["mu"]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * m) / (a * std ** 2 + 1 - a)
    return fn


def predictor(sched, prediction):
    """The exact eps / x0 / v model for the Gaussian data."""
    eps_fn = gaussian_eps(sched)
    x0_fn = lambda x, t, c: gaussian.eps_to_x0(sched, x, t, eps_fn(x, t, c))
    if prediction == "eps":
        return eps_fn
    if prediction == "x0":
        return x0_fn
    return lambda x, t, c: gaussian.v_target(sched, x0_fn(x, t, c), t, eps_fn(x, t, c))


def ode_moments(sched, start):
    """Mean (D,) and std of the exact probability-flow ODE run from x_start ~ N(0, I) at timestep `start` to the
    data. For Gaussian data the ODE is linear and carries the marginal N(sqrt(a) mu, a s^2 + 1 - a) at t onto the
    data N(mu, s^2), so it maps x_start to mu + s / s_start (x - sqrt(a_start) mu)."""
    a = float(np.float64(sched.alphas_cumprod[start]))
    slope = STD / math.sqrt(a * STD ** 2 + 1 - a)
    return MU - slope * math.sqrt(a) * MU, slope


def chain_moments(run):
    """Exact mean (D,) and std (D,) of a sampler's output for x_T ~ N(0, I): with the exact Gaussian predictor
    every step is affine in x, so the chain is x0 = A x_T + b with b = run(0) and A = run(1) - run(0)."""
    out = np.asarray(run(jnp.asarray([[0.0, 0.0], [1.0, 1.0]])), np.float64)
    return out[0], out[1] - out[0]


def moment_errors(sched, run, start=None):
    """(max |mean error|, max |std error|) of `run(x_T)` against the exact ODE from timestep `start` (the chain's
    first; None: T - 1)."""
    m, s = chain_moments(run)
    em, es = ode_moments(sched, sched.num_timesteps - 1 if start is None else start)
    return float(np.abs(m - em).max()), float(np.abs(s - es).max())


@pytest.fixture(scope="module", params=[("cosine", 200), ("linear", 1000)], ids=["cosine200", "linear1000"])
def sched(request):
    return schedules.get(request.param[0], request.param[1])


def _dpm(fn, sched, **kw):
    return lambda x_T: samplers.dpm_solver_sample(fn, sched, (2, 2), jax.random.PRNGKey(0), x_T=x_T, **kw)


def _start(sched, n, spacing="logsnr"):
    return int(samplers.solver_timesteps(sched, n, spacing)[-1])


def _ddim(fn, sched, **kw):
    return lambda x_T: samplers.ddim_sample(fn, sched, (2, 2), jax.random.PRNGKey(0), x_T=x_T, **kw)


# ----------------------------------------------------------------------------------------- timesteps
def test_solver_timesteps_log_snr_spacing(sched):
    T = sched.num_timesteps
    ts = samplers.solver_timesteps(sched, 10)
    assert ts[0] == 0 and len(ts) == 10 and np.all(np.diff(ts) > 0)
    lam_all = samplers.log_snr(sched)                       # starts at lambda = max(lambda_{T-1}, -5.1), rounded
    assert ts[-1] == T - 1 if lam_all[-1] > -5.1 else lam_all[ts[-1] + 1] < -5.1 < lam_all[ts[-1] - 1]
    lam = samplers.log_snr(sched)[ts]
    steps = -np.diff(lam)                                  # lambda falls by about the same amount each step
    np.testing.assert_allclose(steps, (lam[0] - lam[-1]) / 9, rtol=0.6)
    np.testing.assert_array_equal(samplers.solver_timesteps(sched, 10, "uniform"), samplers.ddim_timesteps(T, 10))
    short = schedules.get("cosine", 20)                    # more steps than distinct rounded timesteps: kept once
    assert len(np.unique(samplers.solver_timesteps(short, 20))) == len(samplers.solver_timesteps(short, 20))
    with pytest.raises(InputError, match="diffusion.timestep_spacing"):
        samplers.solver_timesteps(sched, 10, "karras")
    with pytest.raises(InputError, match="diffusion.sample_steps"):
        samplers.solver_timesteps(sched, 1)


# ----------------------------------------------------------------------------------------- exact moments
def test_dpm_2m_log_snr_matches_the_exact_ode_in_10_to_20_steps(sched):
    """DPM-Solver++(2M) with log-SNR steps: mean within 1e-3 and std within 0.02 (4 % of 0.5) of the exact ODE at
    10 and 20 steps; DDIM at the same step count is at least 3x further off in std."""
    fn = gaussian_eps(sched)
    for n in (10, 20):
        em, es = moment_errors(sched, _dpm(fn, sched, num_steps=n), _start(sched, n))
        _, ddim_es = moment_errors(sched, _ddim(fn, sched, num_steps=n))
        assert em < 1e-3 and es < 0.02, (n, em, es)
        assert ddim_es > 3 * es and ddim_es > 0.03, (n, es, ddim_es)


def test_uniform_time_spacing_is_worse_at_10_steps(sched):
    """At 10 steps the 2M solver on uniform timesteps is off by more than 0.05 in std, log-SNR steps by < 0.02."""
    fn = gaussian_eps(sched)
    _, log_es = moment_errors(sched, _dpm(fn, sched, num_steps=10), _start(sched, 10))
    _, uni_es = moment_errors(sched, _dpm(fn, sched, num_steps=10, spacing="uniform"))
    assert uni_es > 0.05 and uni_es > 5 * log_es, (log_es, uni_es)


def test_order_1_is_ddim_and_order_3_runs(sched):
    fn = gaussian_eps(sched)
    for spacing in ("uniform", "logsnr"):
        np.testing.assert_allclose(chain_moments(_dpm(fn, sched, num_steps=10, order=1, spacing=spacing)),
                                   chain_moments(_ddim(fn, sched, num_steps=10, spacing=spacing)), atol=1e-5)
    em, es = moment_errors(sched, _dpm(fn, sched, num_steps=20, order=3), _start(sched, 20))
    assert em < 1e-3 and es < 0.02, (em, es)


def test_dpm_samples_reproduce_gaussian_data():
    """Monte Carlo: 4096 chains of 2M with 10 log-SNR steps give the data's mean and variance."""
    s = schedules.get("linear", 1000)
    x = np.asarray(jax.jit(lambda k: samplers.dpm_solver_sample(gaussian_eps(s), s, (4096, 2), k, num_steps=10))(
        jax.random.PRNGKey(3)), np.float64)
    np.testing.assert_allclose(x.mean(0), MU, atol=0.05)
    np.testing.assert_allclose(x.var(0), STD ** 2, rtol=0.15)


def test_eps_x0_and_v_models_agree():
    s = schedules.get("cosine", 200)
    key, x_T = jax.random.PRNGKey(7), jax.random.normal(jax.random.PRNGKey(8), (64, 2))
    ref = samplers.dpm_solver_sample(predictor(s, "eps"), s, (64, 2), key, num_steps=10, x_T=x_T)
    for prediction in ("x0", "v"):
        got = samplers.dpm_solver_sample(predictor(s, prediction), s, (64, 2), key, num_steps=10, x_T=x_T,
                                         prediction=prediction)
        np.testing.assert_allclose(got, ref, atol=2e-3, err_msg=prediction)


def test_guidance_is_one_batched_call_and_matches_the_plain_sampler():
    """x0_hat is affine in mu, so guidance with scale s, cond mu_c and a zero uncond equals the plain sampler with
    mu = s mu_c; scale 1 is the conditional model; scale 0 with uncond is the unconditional one."""
    s, key, b = schedules.get("cosine", 200), jax.random.PRNGKey(10), 32
    fn, calls = gaussian_eps(s), []

    def counting_fn(x, t, cond):
        calls.append(x.shape)
        return fn(x, t, cond)

    cond = {"mu": jnp.tile(jnp.asarray(MU, jnp.float32), (b, 1))}
    for scale in (1.0, 2.5):
        calls.clear()
        guided = samplers.dpm_solver_sample(counting_fn, s, (b, 2), key, num_steps=10, cond=cond,
                                            guidance_scale=scale)
        assert calls == [(2 * b, 2)]                           # traced once in the scan, batch [cond; uncond]
        plain = samplers.dpm_solver_sample(fn, s, (b, 2), key, num_steps=10, cond={"mu": scale * cond["mu"]})
        np.testing.assert_allclose(guided, plain, rtol=1e-4, atol=1e-3)
    uncond = {"mu": jnp.ones_like(cond["mu"])}
    g = samplers.dpm_solver_sample(fn, s, (b, 2), key, num_steps=10, cond=cond, uncond=uncond, guidance_scale=0.0)
    np.testing.assert_allclose(g, samplers.dpm_solver_sample(fn, s, (b, 2), key, num_steps=10, cond=uncond),
                               atol=1e-4)


def test_clip_trajectory_and_one_scan():
    s = schedules.get("cosine", 200)
    fn, key = gaussian_eps(s), jax.random.PRNGKey(11)
    x = samplers.dpm_solver_sample(fn, s, (256, 2), key, num_steps=10, clip_x0=1.0)
    assert float(np.max(np.abs(x))) <= 1.0 + 1e-5 and float(np.max(x[:, 0])) > 0.99   # mu_0 = 1.5 is clipped
    x, traj, pred_x0 = samplers.dpm_solver_sample(fn, s, (4, 2), key, num_steps=12, order=3,
                                                  return_trajectory=True, return_pred_x0=True)
    assert traj.shape == pred_x0.shape == (12, 4, 2)
    np.testing.assert_array_equal(traj[-1], x)
    np.testing.assert_allclose(pred_x0[-1], x, atol=1e-5)                 # the last step returns x0_hat
    jaxpr = jax.make_jaxpr(lambda k: samplers.dpm_solver_sample(fn, s, (4, 2), k, num_steps=12))(key)
    assert [e.primitive.name for e in jaxpr.eqns].count("scan") == 1
    with pytest.raises(InputError, match="diffusion.dpm_order"):
        samplers.dpm_solver_sample(fn, s, (4, 2), key, num_steps=10, order=4)


# ----------------------------------------------------------------------------------------- the task's config path
def msd_config(**diffusion):
    c = ml_collections.ConfigDict()
    c.seed, c.task = 0, "segmentation_diffusion"
    c.model = ml_collections.ConfigDict(dict(name="medsegdiff", image_size=8, image_channels=2, first_conv_channels=8,
                                             num_layers=1, num_res_blocks=1, time_embedding_dim=16,
                                             attention_resolutions=(), attention_heads=1, attention_head_dim=8,
                                             resnet_groups=4))
    c.diffusion = ml_collections.ConfigDict(dict(schedule="linear", num_timesteps=100, sampler="dpm++",
                                                 sample_steps=5, ensemble=2, fusion="mean", clip_x0=1.0))
    c.diffusion.update(diffusion)
    c.data = ml_collections.ConfigDict(dict(image_size=8, channels=2))
    c.train = ml_collections.ConfigDict(dict(steps=10, batch_size=4, lr=1e-3, precision="fp32", ema=0.0))
    return c


def test_medsegdiff_task_samples_with_dpm_solver_in_one_scan(monkeypatch):
    task = tasks.build(msd_config())
    assert task.sampler_text() == "DPM-Solver++(2M) 5 steps"
    calls, solver = [], samplers.dpm_solver_sample
    monkeypatch.setattr(samplers, "dpm_solver_sample", lambda *a, **kw: calls.append(kw) or solver(*a, **kw))
    variables = task.init(jax.random.PRNGKey(0), task.example_batch(2))
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 2)), jnp.float32)
    out = task._predict_jit(variables, images, jax.random.PRNGKey(2))
    assert [(kw["num_steps"], kw["order"], kw["spacing"], kw["cond"]["image"].shape) for kw in calls] == \
        [(5, 2, "logsnr", (4, 8, 8, 2))]                               # one call: the ensemble of 2 x 2 images
    assert out["samples"].shape == (2, 2, 8, 8, 1) and out["prob"].shape == (2, 8, 8, 1)
    assert bool(jnp.all(jnp.isfinite(out["samples"])))


def test_sampler_keys_on_the_command_line():
    config, _ = parse(["train", "--config", "configs/medsegdiff_tiny.py", "--config.diffusion.sampler=dpm++",
                       "--config.diffusion.sample_steps=10", "--config.diffusion.dpm_order=3",
                       "--config.diffusion.timestep_spacing=uniform"])
    d = config.diffusion
    assert (d.sampler, d.sample_steps, d.dpm_order, d.timestep_spacing) == ("dpm++", 10, 3, "uniform")


@pytest.mark.parametrize("key,value", [("sampler", "dpm"), ("dpm_order", 4), ("timestep_spacing", "karras")])
def test_bad_sampler_settings_name_the_key(key, value):
    with pytest.raises(InputError, match=f"diffusion.{key}"):
        tasks.build(msd_config(**{key: value}))
