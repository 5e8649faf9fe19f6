"""Shared pieces of every diffusion task: the schedule, the noise-prediction loss and the scan sampler.

Config block `diffusion`: schedule (linear | cosine | scaled_linear | cosine_angle), num_timesteps, optional
beta_start / beta_end, prediction (eps | x0 | v), loss (mse | l1), min_snr_gamma (0: off), sampler (ddim |
ddpm | dpm++), sample_steps, eta (DDIM), clip_x0 (bound for the predicted x0, 0: off), guidance_scale (0: off),
dpm_order (DPM-Solver++ order 1 | 2 | 3, default 2: the 2M solver), timestep_spacing (which timesteps DDIM /
DPM-Solver++ visit: logsnr | uniform | quadratic; default uniform for DDIM, logsnr for dpm++).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdiff.diffusion import gaussian, samplers, schedules
from jaxdiff.errors import InputError
from jaxdiff.tasks.base import Task
from jaxdiff.training import sharding as shd

SAMPLERS = ("ddim", "ddpm", "dpm++")


def make_schedule(diff_cfg):
    """Schedule value from the `diffusion` config block."""
    kw = {k: float(diff_cfg[k]) for k in ("beta_start", "beta_end") if k in diff_cfg}
    return schedules.get(diff_cfg.schedule, num_timesteps=int(diff_cfg.num_timesteps), **kw)


class DiffusionTask(Task):
    """A task whose model is a denoiser `model(x_t, t, cond) -> prediction`."""

    def __init__(self, config):
        super().__init__(config)
        d = config.diffusion
        self.schedule = make_schedule(d)
        self.prediction = d.get("prediction", "eps")
        if self.prediction not in ("eps", "x0", "v"):
            raise InputError(f"config key diffusion.prediction: {self.prediction!r} is not eps, x0 or v")
        self.loss_kind = d.get("loss", "mse")
        if self.loss_kind not in ("mse", "l1"):
            raise InputError(f"config key diffusion.loss: {self.loss_kind!r} is not mse or l1")
        self.sampler = d.get("sampler", "ddim")
        if self.sampler not in SAMPLERS:
            raise InputError(f"config key diffusion.sampler: {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        self.timestep_spacing = d.get("timestep_spacing", None) or ("logsnr" if self.sampler == "dpm++" else "uniform")
        if self.timestep_spacing not in samplers.SOLVER_SPACINGS:
            raise InputError(f"config key diffusion.timestep_spacing: {self.timestep_spacing!r} is not one of "
                             f"{', '.join(samplers.SOLVER_SPACINGS)}")
        self.dpm_order = d.get("dpm_order", 2)
        if self.dpm_order not in samplers.DPM_ORDERS:
            raise InputError(f"config key diffusion.dpm_order: {self.dpm_order!r} is not 1, 2 or 3")

    def diffusion_loss(self, params, model_state, x0, cond, rng, train=True):
        """Noise `x0` (B, ..., C) at uniform random t and score the denoiser's prediction.

        Returns (scalar loss, (metrics, new model_state)).
        """
        t_rng, n_rng, d_rng = jax.random.split(rng, 3)
        b = x0.shape[0]
        t = jax.random.randint(t_rng, (b,), 0, self.schedule.num_timesteps)
        noise = jax.random.normal(n_rng, x0.shape, jnp.float32)
        x_t = gaussian.q_sample(self.schedule, x0, t, noise)
        mutable = list(model_state.keys()) if train and model_state else False
        out = self.apply({"params": params, **model_state}, x_t, t, cond, rng=d_rng, train=train, mutable=mutable)
        pred, new_state = out if mutable else (out, model_state)
        gamma = float(self.config.diffusion.get("min_snr_gamma", 0.0)) or None
        per_example = gaussian.loss(self.schedule, pred, x0, noise, t, x_t, prediction=self.prediction,
                                    kind=self.loss_kind, min_snr_gamma=gamma)
        loss = jnp.mean(per_example)
        return loss, ({"loss": loss}, new_state)

    def denoise_fn(self, variables):
        """`denoise_fn(x_t, t, cond)` closing over evaluation variables, as the samplers expect."""
        return lambda x_t, t, cond: self.apply(variables, x_t, t, cond, train=False)

    def sample(self, variables, shape, rng, cond=None, num_steps=None, uncond=None, return_trajectory=False,
               sharding=None):
        """Run the configured reverse chain (one lax.scan) for a batch of `shape` (B, ..., C), its x kept in
        `sharding` if given."""
        d = self.config.diffusion
        clip = float(d.get("clip_x0", 1.0)) or None
        guidance = float(d.get("guidance_scale", 0.0)) or None
        common = dict(prediction=self.prediction, cond=cond, guidance_scale=guidance, clip_x0=clip,
                      return_trajectory=return_trajectory, uncond=uncond, sharding=sharding)
        if self.sampler == "ddpm":
            return samplers.ddpm_sample(self.denoise_fn(variables), self.schedule, shape, rng, **common)
        steps = int(num_steps or d.get("sample_steps", 50))
        if self.sampler == "dpm++":
            return samplers.dpm_solver_sample(self.denoise_fn(variables), self.schedule, shape, rng, num_steps=steps,
                                              order=int(self.dpm_order), spacing=self.timestep_spacing, **common)
        return samplers.ddim_sample(self.denoise_fn(variables), self.schedule, shape, rng, num_steps=steps,
                                    eta=float(d.get("eta", 0.0)), spacing=self.timestep_spacing, **common)

    def sampler_text(self, num_steps=None) -> str:
        """'DDIM 10 steps' / 'DDPM 1000 steps' / 'DPM-Solver++(2M) 10 steps': the reverse chain `sample` runs,
        for progress lines."""
        d = self.config.diffusion
        if self.sampler == "ddpm":
            return f"DDPM {self.schedule.num_timesteps} steps"
        steps = int(num_steps or d.get("sample_steps", 50))
        if self.sampler == "dpm++":
            return f"DPM-Solver++({self.dpm_order}M) {steps} steps"
        return f"DDIM {steps} steps"

    @functools.cached_property
    def _compiled_sample(self):
        return jax.jit(self.sample, static_argnames=("shape", "num_steps", "return_trajectory", "sharding"))

    def jitted_sample(self, variables, shape, rng, cond=None, num_steps=None, uncond=None, return_trajectory=False):
        """`sample`, compiled once per shape, data-parallel over this process's devices: the batch shape[0] is
        split over the most devices that divide it (`sharding.place_for_sampling`; with one CPU device, or one
        GPU, as a plain jit). Same samples whatever the split (the noise does not depend on it)."""
        sharding, (variables, rng), (cond, uncond) = shd.place_for_sampling(shape[0], (variables, rng),
                                                                           (cond, uncond))
        return self._compiled_sample(variables, shape, rng, cond=cond, num_steps=num_steps, uncond=uncond,
                                     return_trajectory=return_trajectory, sharding=sharding)
