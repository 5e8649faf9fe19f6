"""Diffusion core: schedules (values), the Gaussian forward process and losses, and lax.scan samplers.

    from jaxdiff.diffusion import schedules, gaussian, samplers
    sched = schedules.get("linear", num_timesteps=1000)
    x0 = samplers.ddim_sample(denoise_fn, sched, (8, 32, 32, 1), key, num_steps=50)
"""
from jaxdiff.diffusion import gaussian, samplers, schedules

__all__ = ["gaussian", "samplers", "schedules"]
