"""Reverse-process samplers: each runs its whole chain in one `jax.lax.scan`.

A sampler takes a plain function, not a model:

    denoise_fn(x_t, t, cond) -> prediction
        x_t (B, ...) float32, t (B,) int32 schedule indices, cond any pytree with leading axis B (or None);
        the prediction (B, ...) is eps, x0 or v, as named by `prediction=`.

so any callable, including an analytic one, can be sampled. The step timesteps are precomputed
(static NumPy constants from T and num_steps) and scanned over together with one PRNG key per step.
The samplers are jit-able with `shape` (and `num_steps`, `order`, `spacing`, `return_trajectory`) static, e.g.
`jax.jit(functools.partial(ddim_sample, fn, shape=(8, 32, 32, 1), num_steps=50))(sched=sched, key=key)`.

Classifier-free guidance (`guidance_scale` not None and `cond` not None): the denoiser is called once
per step on the batch [cond; uncond] (2B examples) and pred = pred_uncond + s (pred_cond - pred_uncond);
s = 1 is the conditional model, s = 0 the unconditional one.

Samplers: `ddpm_sample` (all T steps), `ddim_sample` and `dpm_solver_sample` (DPM-Solver++ multistep, Lu et
al. 2022, data-prediction form, orders 1-3; accurate in 10-20 steps with log-SNR spacing, `solver_timesteps`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import gaussian
from jaxdiff.diffusion.schedules import Schedule
from jaxdiff.errors import InputError

VARIANCES = ("beta", "posterior")
SPACINGS = ("uniform", "quadratic")
SOLVER_SPACINGS = ("logsnr", "uniform", "quadratic")
DPM_ORDERS = (1, 2, 3)
LAMBDA_MIN = -5.1   # lowest half log-SNR a log-SNR-spaced chain starts from (see `solver_timesteps`)


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = "uniform") -> np.ndarray:
    """Ascending int32 timesteps (num_steps,) a DDIM chain visits, in [0, T).

    uniform: round(linspace(0, T - 1, n)) (e.g. linspace(0, 999, 50)); quadratic: the DDIM paper's
    floor(linspace(0, sqrt(0.8 T), n)^2), denser near t = 0 (may repeat a step when n is large vs T;
    a repeated step is an identity step).
    """
    if spacing not in SPACINGS:
        raise InputError(f"diffusion.timestep_spacing: {spacing!r} is not one of {', '.join(SPACINGS)}")
    if not 2 <= num_steps <= num_timesteps:
        raise InputError(f"diffusion.sample_steps: {num_steps} is not in [2, num_timesteps={num_timesteps}]")
    if spacing == "uniform":
        steps = np.round(np.linspace(0, num_timesteps - 1, num_steps))
    else:
        steps = np.floor(np.linspace(0, np.sqrt(0.8 * num_timesteps), num_steps) ** 2)
    return steps.astype(np.int32)


def log_snr(sched: Schedule) -> np.ndarray:
    """Half log-SNR lambda_t = log(alpha_t) - log(sigma_t), alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t),
    float64 (T,), strictly decreasing in t; from the schedule's stored float32 sqrt coefficients (the ones the
    samplers convert predictions with)."""
    alpha = np.asarray(sched.sqrt_alphas_cumprod, np.float64)
    sigma = np.asarray(sched.sqrt_one_minus_alphas_cumprod, np.float64)
    return np.log(alpha) - np.log(sigma)


def solver_timesteps(sched: Schedule, num_steps: int, spacing: str = "logsnr") -> np.ndarray:
    """Ascending, distinct int32 timesteps (at most num_steps, from 0 to T - 1) a DPM-Solver chain visits.

    logsnr: lambda uniform between max(lambda_{T-1}, LAMBDA_MIN) and lambda_0 (`log_snr`), each mapped back to t
    by linear interpolation of t in lambda and rounded to the nearest integer (the model only sees integer
    timesteps; the solver then uses the exact lambda of each rounded t). The floor LAMBDA_MIN = -5.1 (diffusers'
    `lambda_min_clipped` for cosine schedules) keeps the chain from spending steps where the cosine schedule's
    last few timesteps drive lambda to -8 and below (pure noise either way); the linear schedules are not
    affected (lambda_{T-1} >= -5.06 for T = 1000). uniform / quadratic: `ddim_timesteps`.
    A timestep reached twice after rounding is kept once, so a long chain on a short schedule may take
    fewer than num_steps steps.
    """
    if spacing not in SOLVER_SPACINGS:
        raise InputError(f"diffusion.timestep_spacing: {spacing!r} is not one of {', '.join(SOLVER_SPACINGS)}")
    T = sched.num_timesteps
    if spacing != "logsnr":
        return np.unique(ddim_timesteps(T, num_steps, spacing)).astype(np.int32)
    if not 2 <= num_steps <= T:
        raise InputError(f"diffusion.sample_steps: {num_steps} is not in [2, num_timesteps={T}]")
    lam = log_snr(sched)
    grid = np.linspace(max(lam[-1], LAMBDA_MIN), lam[0], num_steps)
    t = np.interp(grid, lam[::-1], np.arange(T - 1, -1, -1, dtype=np.float64))
    return np.unique(np.clip(np.round(t), 0, T - 1)).astype(np.int32)


def dpm_solver_coefficients(sched: Schedule, ts_desc: np.ndarray, order: int = 2,
                            lower_order_final: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-step linear coefficients of DPM-Solver++(kM) (Lu et al. 2022, multistep, data prediction) over the
    descending timesteps `ts_desc` (n,), with the final step to the clean data (sigma = 0).

    Step i goes from t_i to t_{i+1} (the last one to lambda = inf) as
        x_{i+1} = cx[i] x_i + c[i, 0] m_i + c[i, 1] m_{i-1} + c[i, 2] m_{i-2},
    m_j the (clipped) predicted x0 at t_j. With h = lambda_{t_{i+1}} - lambda_{t_i}, A = alpha_{i+1} (1 - e^-h):
    order 1: x_{i+1} = sigma_{i+1}/sigma_i x_i + A m_i (DDIM); order 2 (the paper's 2M, midpoint form):
    x_{i+1} = sigma_{i+1}/sigma_i x_i + A m_i + A/2 (m_i - m_{i-1}) / r0 with r0 = h_{i-1}/h; order 3 as the
    3M update of the DPM-Solver++ paper's code and diffusers' DPMSolverMultistepScheduler. The order of step
    i is min(order, i + 1) (lower orders while the history fills), the final step is first order (x = m),
    and with lower_order_final and n < 15 steps, also min(order, n - i) (as diffusers).
    Returns cx (n,) and c (n, 3), float64.
    """
    if order not in DPM_ORDERS:
        raise InputError(f"diffusion.dpm_order: {order!r} is not one of {', '.join(map(str, DPM_ORDERS))}")
    alpha = np.asarray(sched.sqrt_alphas_cumprod, np.float64)[ts_desc]
    sigma = np.asarray(sched.sqrt_one_minus_alphas_cumprod, np.float64)[ts_desc]
    lam = log_snr(sched)[ts_desc]
    n = len(ts_desc)
    cx, c = np.zeros(n), np.zeros((n, 3))
    D0 = np.array([1.0, 0.0, 0.0])
    for i in range(n):
        if i == n - 1:                      # to the clean data: x = x0_hat
            c[i] = D0
            continue
        o = min(order, i + 1)
        if lower_order_final and n < 15:
            o = min(o, n - i)
        h = lam[i + 1] - lam[i]
        a_next, phi = alpha[i + 1], np.expm1(-h)                 # phi = e^-h - 1
        cx[i] = sigma[i + 1] / sigma[i]
        coef = -a_next * phi * D0
        if o >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            D1_0 = np.array([1.0, -1.0, 0.0]) / r0
            if o == 2:
                coef = coef - 0.5 * a_next * phi * D1_0
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                D1_1 = np.array([0.0, 1.0, -1.0]) / r1
                D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
                D2 = (D1_0 - D1_1) / (r0 + r1)
                coef = coef + a_next * (phi / h + 1.0) * D1 - a_next * ((phi + h) / h ** 2 - 0.5) * D2
        c[i] = coef
    return cx, c


def _guided_prediction(denoise_fn, x, t, cond, uncond, guidance_scale):
    """denoise_fn output (B, ...), with classifier-free guidance in one call on 2B examples if asked."""
    if guidance_scale is None or cond is None:
        return denoise_fn(x, t, cond)
    if uncond is None:
        uncond = jax.tree.map(jnp.zeros_like, cond)
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond)
    pred = denoise_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), both)
    pred_cond, pred_uncond = jnp.split(pred, 2, axis=0)
    return pred_uncond + guidance_scale * (pred_cond - pred_uncond)


def _predict_x0_eps(denoise_fn, sched, x, step, prediction, cond, uncond, guidance_scale, clip_x0):
    """At scalar timestep `step`: (t (B,), x0_hat (B, ...), eps_hat (B, ...)); eps is re-derived from
    the clipped x0 when clip_x0 is a bound."""
    t = jnp.full((x.shape[0],), step, jnp.int32)
    pred = _guided_prediction(denoise_fn, x, t, cond, uncond, guidance_scale)
    x0, eps = gaussian.to_x0_eps(sched, x, t, pred, prediction)
    if clip_x0 is not None:
        x0 = jnp.clip(x0, -clip_x0, clip_x0)
        eps = gaussian.x0_to_eps(sched, x, t, x0)
    return t, x0, eps


def _run_chain(step_fn, key, shape, x_T, xs, return_trajectory, return_pred_x0, sharding=None, history=0):
    """Scan `step_fn(x, xs_i, key_i) -> (x_next, x0_hat)` over xs (leading axis n) from x_T (or N(0, I)).

    history > 0: the scan also carries the last `history` x0_hat (zeros at first, newest first) and calls
    `step_fn(x, hist, xs_i, key_i) -> (x_next, x0_hat)` (multistep solvers).
    `sharding` (optional): the chain's x (B, ...) is kept in it, e.g. split over devices along B.
    Returns x (shape) or, with return_trajectory, (x, traj) / (x, traj, pred_x0_traj), each (n, *shape).
    """
    keep = (lambda a: a) if sharding is None else (lambda a: jax.lax.with_sharding_constraint(a, sharding))
    init_key, steps_key = jax.random.split(key)
    x = jax.random.normal(init_key, shape, jnp.float32) if x_T is None else jnp.asarray(x_T, jnp.float32)
    x = keep(x)
    n = jax.tree.leaves(xs)[0].shape[0]

    def body(x, scanned):
        xs_i, key_i = scanned
        x_next, x0 = step_fn(x, xs_i, key_i)
        x_next = keep(x_next.astype(jnp.float32))
        return x_next, ((x_next, x0) if return_trajectory else None)

    def body_hist(carry, scanned):
        x, hist = carry
        xs_i, key_i = scanned
        x_next, x0 = step_fn(x, hist, xs_i, key_i)
        x_next = keep(x_next.astype(jnp.float32))
        hist = (keep(x0.astype(jnp.float32)),) + hist[:-1]
        return (x_next, hist), ((x_next, x0) if return_trajectory else None)

    scanned = (xs, jax.random.split(steps_key, n))
    if history:
        (x, _), ys = jax.lax.scan(body_hist, (x, (jnp.zeros_like(x),) * history), scanned)
    else:
        x, ys = jax.lax.scan(body, x, scanned)
    if not return_trajectory:
        return x
    return (x, *ys) if return_pred_x0 else (x, ys[0])


def ddpm_sample(denoise_fn, sched: Schedule, shape: tuple, key, prediction: str = "eps", cond=None,
                guidance_scale=None, variance: str = "beta", clip_x0: float | None = None,
                return_trajectory: bool = False, uncond=None, x_T=None, return_pred_x0: bool = False,
                sharding=None):
    """Ancestral sampling (Ho et al. 2020) over all T steps, t = T-1 .. 0, in one lax.scan.

    x_{t-1} = posterior_mean(x0_hat, x_t) + sigma_t z with sigma_t^2 = beta_t ("beta") or the posterior
    variance ("posterior"); no noise is added at t = 0.
    shape: (B, ...) of the samples; key: PRNG key (x_T and per-step noise); cond / uncond: pytrees with
    leading axis B; guidance_scale: None (off) or s; clip_x0: None or a bound c, x0_hat clipped to
    [-c, c]; x_T: optional start (B, ...) instead of N(0, I); sharding: optional `jax.sharding.Sharding` of the
    (B, ...) samples, e.g. `training.sharding.place_for_sampling`'s split over devices (data-parallel chains).
    Returns x0 (shape) or, with return_trajectory, (x0, traj) with traj (T, *shape) the x_t after each
    step (and, with return_pred_x0, the predicted x0 after each step (T, *shape) as a third element).
    """
    if variance not in VARIANCES:
        raise InputError(f"diffusion.variance: {variance!r} is not one of {', '.join(VARIANCES)}")
    var = sched.betas if variance == "beta" else sched.posterior_variance

    def step(x, step_t, key):
        t, x0, _ = _predict_x0_eps(denoise_fn, sched, x, step_t, prediction, cond, uncond, guidance_scale, clip_x0)
        mean, _, _ = gaussian.q_posterior_mean_variance(sched, x0, x, t)
        sigma = jnp.where(step_t > 0, jnp.sqrt(var[step_t]), 0.0)
        return mean + sigma * jax.random.normal(key, x.shape, jnp.float32), x0

    steps = jnp.arange(sched.num_timesteps - 1, -1, -1, dtype=jnp.int32)
    return _run_chain(step, key, shape, x_T, steps, return_trajectory, return_pred_x0, sharding)


def ddim_sample(denoise_fn, sched: Schedule, shape: tuple, key, num_steps: int = 50, eta=0.0,
                prediction: str = "eps", cond=None, guidance_scale=None, spacing: str = "uniform",
                clip_x0: float | None = None, return_trajectory: bool = False, uncond=None, x_T=None,
                return_pred_x0: bool = False, sharding=None):
    """DDIM (Song et al. 2021) over `ddim_timesteps(T, num_steps, spacing)` in descending order, one lax.scan.

    With a = abar_t and a' = abar_{t_prev} (a' = 1 after the last step):
    sigma = eta sqrt((1 - a') / (1 - a) (1 - a / a')),
    x_prev = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps_hat + sigma z.
    eta = 0 is deterministic given x_T; eta = 1 matches DDPM's posterior variance.
    spacing: uniform | quadratic (`ddim_timesteps`) or logsnr (`solver_timesteps`).
    Other arguments as in `ddpm_sample`. Returns x0 (shape) or, with return_trajectory, (x0, traj) with
    traj (num_steps, *shape) (plus the predicted x0 per step with return_pred_x0).
    """
    if spacing == "logsnr":
        ts = solver_timesteps(sched, num_steps, spacing)[::-1]
    else:
        ts = ddim_timesteps(sched.num_timesteps, num_steps, spacing)[::-1]
    prev = np.append(ts[1:], -1).astype(np.int32)

    def step(x, ts_i, key):
        step_t, prev_t = ts_i
        _, x0, eps = _predict_x0_eps(denoise_fn, sched, x, step_t, prediction, cond, uncond, guidance_scale, clip_x0)
        a = sched.alphas_cumprod[step_t]
        a_prev = jnp.where(prev_t >= 0, sched.alphas_cumprod[jnp.maximum(prev_t, 0)], 1.0)
        sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
        dir_coef = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma ** 2, 0.0))
        x_prev = jnp.sqrt(a_prev) * x0 + dir_coef * eps + sigma * jax.random.normal(key, x.shape, jnp.float32)
        return x_prev, x0

    xs = (jnp.asarray(ts.copy()), jnp.asarray(prev))
    return _run_chain(step, key, shape, x_T, xs, return_trajectory, return_pred_x0, sharding)


def dpm_solver_sample(denoise_fn, sched: Schedule, shape: tuple, key, num_steps: int = 20, order: int = 2,
                      spacing: str = "logsnr", prediction: str = "eps", cond=None, guidance_scale=None,
                      clip_x0: float | None = None, return_trajectory: bool = False, uncond=None, x_T=None,
                      return_pred_x0: bool = False, sharding=None, lower_order_final: bool = True):
    """DPM-Solver++ (Lu et al. 2022), multistep, data-prediction form, deterministic, in one lax.scan.

    The model is called once per step at the integer timesteps `solver_timesteps(sched, num_steps, spacing)`
    (descending; log-SNR uniform by default); its eps / x0 / v output is turned into x0_hat (clipped to
    [-clip_x0, clip_x0] if given, with guidance as in the other samplers) and the step is the linear update
    of `dpm_solver_coefficients` (order 2: DPM-Solver++(2M), 3: 3M, 1: DDIM); the last step returns x0_hat
    at t = 0. `key` only draws x_T (the same x_T as `ddim_sample` with that key); other arguments as in
    `ddpm_sample`. Returns x0 (shape) or, with return_trajectory, (x0, traj) with traj (n, *shape), n the
    number of steps (plus the predicted x0 per step with return_pred_x0).
    """
    ts = solver_timesteps(sched, num_steps, spacing)[::-1].copy()
    cx, c = dpm_solver_coefficients(sched, ts, order, lower_order_final)

    def step(x, hist, xs_i, key):
        step_t, cx_i, c_i = xs_i
        _, x0, _ = _predict_x0_eps(denoise_fn, sched, x, step_t, prediction, cond, uncond, guidance_scale, clip_x0)
        x_next = cx_i * x + c_i[0] * x0
        for k, m in enumerate(hist[:order - 1]):
            x_next = x_next + c_i[k + 1] * m
        return x_next, x0

    xs = (jnp.asarray(ts), jnp.asarray(cx, jnp.float32), jnp.asarray(c, jnp.float32))
    return _run_chain(step, key, shape, x_T, xs, return_trajectory, return_pred_x0, sharding,
                      history=max(order - 1, 1))
