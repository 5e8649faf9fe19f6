"""Gaussian diffusion: the forward process, the eps / x0 / v parametrisations and the training loss.

Conventions: x0, x_t, noise and predictions have shape (B, ...) with any trailing shape (B, H, W, C)
or (B, D, H, W, C); t is an int32 array of shape (B,) of indices into the schedule. Per-timestep
coefficients are gathered at t and reshaped to (B, 1, ..., 1) so they broadcast over the trailing axes.
With a = abar_t:  x_t = sqrt(a) x0 + sqrt(1 - a) eps,  v = sqrt(a) eps - sqrt(1 - a) x0,
SNR(t) = a / (1 - a).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.diffusion.schedules import Schedule
from jaxdiff.errors import InputError

PREDICTIONS = ("eps", "x0", "v")
LOSSES = ("mse", "l1")


def _coef(arr: jax.Array, t: jax.Array, like: jax.Array) -> jax.Array:
    """arr (T,) gathered at t (B,) and reshaped to (B, 1, ..., 1) to broadcast against `like` (B, ...)."""
    c = arr[t]
    return c.reshape(c.shape + (1,) * (like.ndim - c.ndim))


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise InputError(f"diffusion.prediction: {prediction!r} is not one of {', '.join(PREDICTIONS)}")


def snr(sched: Schedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio abar_t / (1 - abar_t) at t (B,); returns (B,) float32."""
    a = sched.alphas_cumprod[t]
    return a / (1.0 - a)


def q_sample(sched: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Sample q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise (B, ...) -> (B, ...)."""
    return _coef(sched.sqrt_alphas_cumprod, t, x0) * x0 + _coef(sched.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def eps_to_x0(sched: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x0 = (x_t - sqrt(1 - a) eps) / sqrt(a); all (B, ...)."""
    return (x_t - _coef(sched.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _coef(sched.sqrt_alphas_cumprod, t, x_t)


def x0_to_eps(sched: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """eps = (x_t - sqrt(a) x0) / sqrt(1 - a); all (B, ...)."""
    return (x_t - _coef(sched.sqrt_alphas_cumprod, t, x_t) * x0) / _coef(sched.sqrt_one_minus_alphas_cumprod, t, x_t)


def v_target(sched: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Velocity v = sqrt(a) noise - sqrt(1 - a) x0 (Salimans & Ho 2022); all (B, ...)."""
    return _coef(sched.sqrt_alphas_cumprod, t, x0) * noise - _coef(sched.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def v_to_x0(sched: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """x0 = sqrt(a) x_t - sqrt(1 - a) v; all (B, ...)."""
    return _coef(sched.sqrt_alphas_cumprod, t, x_t) * x_t - _coef(sched.sqrt_one_minus_alphas_cumprod, t, x_t) * v


def v_to_eps(sched: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """eps = sqrt(1 - a) x_t + sqrt(a) v; all (B, ...)."""
    return _coef(sched.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + _coef(sched.sqrt_alphas_cumprod, t, x_t) * v


def to_x0_eps(sched: Schedule, x_t: jax.Array, t: jax.Array, pred: jax.Array,
              prediction: str) -> tuple[jax.Array, jax.Array]:
    """A model output `pred` (B, ...) of type `prediction` (eps | x0 | v) -> (x0, eps), both (B, ...)."""
    _check_prediction(prediction)
    if prediction == "eps":
        return eps_to_x0(sched, x_t, t, pred), pred
    if prediction == "x0":
        return pred, x0_to_eps(sched, x_t, t, pred)
    return v_to_x0(sched, x_t, t, pred), v_to_eps(sched, x_t, t, pred)


def training_target(sched: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array,
                    prediction: str = "eps") -> jax.Array:
    """What a `prediction`-type model should output for x_t = q_sample(x0, t, noise); (B, ...)."""
    _check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return v_target(sched, x0, t, noise)


def q_posterior_mean_variance(sched: Schedule, x0: jax.Array, x_t: jax.Array,
                              t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q(x_{t-1} | x_t, x0) = N(mean, variance).

    Returns mean (B, ...) = coef1_t x0 + coef2_t x_t, and variance and log_variance_clipped, both
    (B, 1, ..., 1); the variance is 0 at t = 0.
    """
    mean = _coef(sched.posterior_mean_coef1, t, x_t) * x0 + _coef(sched.posterior_mean_coef2, t, x_t) * x_t
    return mean, _coef(sched.posterior_variance, t, x_t), _coef(sched.posterior_log_variance_clipped, t, x_t)


def min_snr_weight(sched: Schedule, t: jax.Array, prediction: str, gamma: float) -> jax.Array:
    """Min-SNR-gamma loss weight (Hang et al. 2023) at t (B,), adapted to the prediction type; (B,).

    The weight makes the effective x0-space MSE weight min(SNR, gamma) whatever the model predicts:
    since ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2,
    the weights are min(SNR, gamma) / SNR (eps), min(SNR, gamma) (x0), min(SNR, gamma) / (SNR + 1) (v).
    """
    _check_prediction(prediction)
    s = snr(sched, t)
    clipped = jnp.minimum(s, gamma)
    if prediction == "eps":
        return clipped / s
    if prediction == "x0":
        return clipped
    return clipped / (s + 1.0)


def loss(sched: Schedule, pred: jax.Array, x0: jax.Array, noise: jax.Array | None, t: jax.Array,
         x_t: jax.Array | None = None, prediction: str = "eps", kind: str = "mse",
         min_snr_gamma: float | None = None) -> jax.Array:
    """Per-example diffusion loss, shape (B,) float32.

    pred, x0, noise, x_t: (B, ...); `noise` is the eps used to make x_t (if None it is recovered from
    x_t and x0). kind: "mse" (mean squared error) or "l1" (mean absolute error) over all non-batch axes
    against `training_target`. min_snr_gamma: if given, each example is scaled by `min_snr_weight`
    (derived for MSE; applied unchanged for l1).
    """
    if kind not in LOSSES:
        raise InputError(f"diffusion.loss: {kind!r} is not one of {', '.join(LOSSES)}")
    if noise is None:
        noise = x0_to_eps(sched, x_t, t, x0)
    err = pred.astype(jnp.float32) - training_target(sched, x0, noise, t, prediction).astype(jnp.float32)
    per_elem = jnp.square(err) if kind == "mse" else jnp.abs(err)
    per_example = jnp.mean(per_elem, axis=tuple(range(1, err.ndim)))
    if min_snr_gamma is not None:
        per_example = per_example * min_snr_weight(sched, t, prediction, min_snr_gamma)
    return per_example
