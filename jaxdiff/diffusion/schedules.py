"""Noise schedules as values.

A `Schedule` is a frozen pytree of float32 arrays of shape (T,), indexed by the integer timestep
t in [0, T): `alphas_cumprod[t]` is the signal power of x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
Everything is computed once in float64 NumPy when the schedule is built, then stored as float32 JAX
arrays, so a schedule can be passed into (or closed over by) jitted code on any device.

    sched = get("linear", num_timesteps=1000)              # betas 1e-4 .. 0.02
    sched = get("linear", 2000, beta_start=0.00085, beta_end=0.012)
    sched = get("cosine", 100)                             # Nichol & Dhariwal, s = 0.008, max beta 0.999
    sched = get("cosine_angle", 1000)                      # the Keras DDIM continuous schedule, discretised
"""
from __future__ import annotations

import inspect
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import InputError


@flax.struct.dataclass
class Schedule:
    """Precomputed diffusion coefficients; every field is a float32 array of shape (T,).

    betas, alphas = 1 - betas, alphas_cumprod (abar_t = prod_{s<=t} alphas_s), alphas_cumprod_prev
    (abar_{t-1}, with abar_{-1} = 1), sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod,
    posterior_variance (of q(x_{t-1} | x_t, x0): beta_t (1 - abar_{t-1}) / (1 - abar_t)),
    posterior_log_variance_clipped (log of it with the t = 0 entry, which is 0, replaced by t = 1),
    posterior_mean_coef1 / coef2 (posterior mean = coef1 x0 + coef2 x_t).
    """

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array

    @property
    def num_timesteps(self) -> int:
        """T, the number of discrete timesteps (a static Python int, also under jit)."""
        return self.betas.shape[0]


def from_betas(betas) -> Schedule:
    """Build a `Schedule` from betas of shape (T,), T >= 2, every value in (0, 1)."""
    b = np.asarray(betas, np.float64)
    if b.ndim != 1 or b.size < 2 or not np.all((b > 0) & (b < 1)):
        raise InputError("diffusion.schedule: betas must be a 1-D array of at least 2 values in (0, 1)")
    alphas = 1.0 - b
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = b * (1.0 - ac_prev) / (1.0 - ac)
    fields = dict(
        betas=b, alphas=alphas, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac), sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
        posterior_mean_coef1=b * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    )
    return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Ho et al. 2020: betas = linspace(beta_start, beta_end, T), shape (T,)."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    """Stable Diffusion's schedule: betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2, shape (T,)."""
    return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=np.float64) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021: abar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2);
    beta_i = min(1 - f(i + 1) / f(i), max_beta), shape (T,)."""
    f = lambda i: np.cos((i / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
    i = np.arange(num_timesteps, dtype=np.float64)
    return np.minimum(1.0 - f(i + 1) / f(i), max_beta)


def _angle(t, min_signal_rate: float, max_signal_rate: float):
    """Keras DDIM angle(t) = acos(max) + t (acos(min) - acos(max)), t in [0, 1] (NumPy or JAX)."""
    start, end = math.acos(max_signal_rate), math.acos(min_signal_rate)
    return start + t * (end - start)


def cosine_angle_rates(t, min_signal_rate: float = 0.02, max_signal_rate: float = 0.95):
    """Continuous Keras DDIM schedule at diffusion times `t` in [0, 1] (any shape).

    Returns (signal_rates, noise_rates) of the shape of `t`: cos(angle(t)) and sin(angle(t)), so
    x_t = signal * x0 + noise * eps with signal^2 + noise^2 = 1.
    """
    angle = _angle(jnp.asarray(t, jnp.float32), min_signal_rate, max_signal_rate)
    return jnp.cos(angle), jnp.sin(angle)


def cosine_angle_betas(num_timesteps: int, min_signal_rate: float = 0.02,
                       max_signal_rate: float = 0.95) -> np.ndarray:
    """The Keras DDIM schedule discretised at t_i = (i + 1) / T: abar_i = cos^2(angle(t_i)), shape (T,)."""
    t = np.arange(1, num_timesteps + 1, dtype=np.float64) / num_timesteps
    ac = np.cos(_angle(t, min_signal_rate, max_signal_rate)) ** 2
    return 1.0 - ac / np.append(1.0, ac[:-1])


_BETAS = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
    "cosine_angle": cosine_angle_betas,
}


def get(name: str, num_timesteps: int = 1000, **kw) -> Schedule:
    """Schedule `name` (linear | scaled_linear | cosine | cosine_angle) with T = `num_timesteps`.

    Keyword arguments override the builder's defaults (e.g. beta_start / beta_end for the linear ones,
    s / max_beta for cosine, min_signal_rate / max_signal_rate for cosine_angle); an unknown name or
    keyword raises `InputError` naming the config key.
    """
    if name not in _BETAS:
        raise InputError(f"diffusion.schedule: unknown schedule {name!r} (known: {', '.join(_BETAS)})")
    if int(num_timesteps) < 2:
        raise InputError(f"diffusion.num_timesteps: must be at least 2, got {num_timesteps}")
    builder = _BETAS[name]
    allowed = list(inspect.signature(builder).parameters)[1:]
    for key in kw:
        if key not in allowed:
            raise InputError(f"diffusion.{key}: not a parameter of schedule {name!r} (it takes {', '.join(allowed)})")
    return from_betas(builder(int(num_timesteps), **kw))
