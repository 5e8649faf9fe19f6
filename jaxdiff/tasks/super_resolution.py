"""Super-resolution diffusion (the SR1 / SR2 stages of the 64 -> 128 -> 256 cascade): learn p(high-res | low-res).

Batch: {"image": (B, H, W, C) high-res in [-1, 1]}. The low-res input is made on the fly by area-averaging to
`data.low_res_size` (H a multiple of it); the model gets it as cond["low_res"] (B, h, w, C) and upsamples it
bilinearly itself (`model.low_res = True`).

Noise-conditioning augmentation (cascaded diffusion, Ho et al. 2021): with `diffusion.low_res_noise` = f > 0
the low-res input is noised with the stage's own forward process at a level s ~ U{0 .. round(f (T - 1))}
drawn per example in training, and s is given to the model as cond["aug_level"] (`model.aug_level = True`).
At sampling s is fixed to round(`diffusion.low_res_noise_sample` (T - 1)) (default f / 2).

Residual diffusion (`diffusion.residual = True`, as in SRDiff, Li et al. 2022): the chain runs on the residual
r = high-res - bilinear(low-res) of the un-augmented low-res input, and `upscale` returns bilinear(low-res) + r
clipped to [-1, 1]. With x0-prediction a denoiser that outputs 0 returns the bilinear upsample, so a briefly
trained stage starts from interpolation rather than from noise. Off (the original cascade's setup): the chain
runs on the high-res image itself.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import reporting
from jaxdiff.diffusion import gaussian
from jaxdiff.errors import InputError
from jaxdiff.evaluators.super_resolution import sr_report
from jaxdiff.tasks.base import progress_line, zeros_like_spec
from jaxdiff.tasks.diffusion_task import DiffusionTask


def area_downsample(x, size: int):
    """(B, H, W, C) -> (B, size, size, C) by averaging factor x factor blocks (H = W = factor * size)."""
    b, h, w, c = x.shape
    f = h // size
    return x.reshape(b, size, f, w // f, f, c).mean(axis=(2, 4))


def to_unit(x) -> np.ndarray:
    """[-1, 1] -> [0, 1] float32 NumPy, clipped."""
    return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)


class SuperResolutionTask(DiffusionTask):
    """Conditional denoiser of the high-res image given its low-res version; reports SR vs interpolation."""

    def __init__(self, config):
        super().__init__(config)
        m, d, diff = config.model, config.data, config.diffusion
        self.size, self.low_size = int(d.image_size), int(d.get("low_res_size", 0))
        if self.low_size < 1 or self.size % self.low_size:
            raise InputError(f"config key data.low_res_size: {self.low_size} does not divide data.image_size "
                             f"{self.size}")
        if not m.get("low_res", False):
            raise InputError("config key model.low_res: must be True for the super_resolution task")
        self.noise_max = float(diff.get("low_res_noise", 0.0))
        if not 0.0 <= self.noise_max <= 1.0:
            raise InputError(f"config key diffusion.low_res_noise: {self.noise_max} is not in [0, 1]")
        if bool(m.get("aug_level", False)) != (self.noise_max > 0):
            raise InputError("config key model.aug_level: must be True exactly when diffusion.low_res_noise > 0")
        self.noise_sample = float(diff.get("low_res_noise_sample", self.noise_max / 2))
        self.residual = bool(diff.get("residual", False))

    # --- shapes and conditioning ----------------------------------------------------------------------
    def image_shape(self) -> tuple:
        return (self.size, self.size, int(self.config.data.get("channels", 1)))

    def low_res_shape(self) -> tuple:
        return (self.low_size, self.low_size, int(self.config.data.get("channels", 1)))

    def example_batch(self, batch_size: int) -> dict:
        return zeros_like_spec({"image": (self.image_shape(), np.float32)}, batch_size)

    def _level(self, fraction: float) -> int:
        return int(round(fraction * (self.schedule.num_timesteps - 1)))

    def condition(self, low, rng=None, train: bool = False) -> dict:
        """cond for a low-res batch (B, h, w, C) in [-1, 1]: noise-augmented at a random (train) or the fixed
        sampling level when augmentation is on; `rng` may be None only without augmentation."""
        if self.noise_max <= 0:
            return {"low_res": low}
        l_rng, n_rng = jax.random.split(rng)
        b = low.shape[0]
        level = (jax.random.randint(l_rng, (b,), 0, self._level(self.noise_max) + 1) if train
                 else jnp.full((b,), self._level(self.noise_sample), jnp.int32))
        noisy = gaussian.q_sample(self.schedule, low, level, jax.random.normal(n_rng, low.shape, low.dtype))
        return {"low_res": noisy, "aug_level": level}

    def upsample(self, low):
        """Bilinear (B, h, w, C) -> (B, H, W, C), the model's own upsampling: the residual's base."""
        return jax.image.resize(low, (low.shape[0], *self.image_shape()[:2], low.shape[-1]), "bilinear",
                                antialias=False)

    def model_inputs(self, batch):
        x = jnp.asarray(batch["image"])
        low = area_downsample(x, self.low_size)
        cond = {"low_res": low, **({"aug_level": jnp.zeros((x.shape[0],), jnp.int32)} if self.noise_max > 0 else {})}
        return (x, jnp.zeros((x.shape[0],), jnp.int32), cond), {}

    def loss(self, params, model_state, batch, rng, train=True):
        c_rng, rng = jax.random.split(rng)
        x = batch["image"]
        low = area_downsample(x, self.low_size)
        cond = self.condition(low, c_rng, train=train)
        target = x - self.upsample(low) if self.residual else x
        return self.diffusion_loss(params, model_state, target, cond, rng, train)

    # --- sampling and reports -------------------------------------------------------------------------
    def upscale(self, variables, low, rng, num_steps=None):
        """Super-resolve low-res images (N, h, w, C) in [-1, 1] -> (N, H, W, C) (one scan)."""
        low = jnp.asarray(low, jnp.float32)
        if low.shape[1:] != self.low_res_shape():
            raise InputError(f"low-res input {low.shape[1:]}: this stage expects {self.low_res_shape()}")
        c_rng, s_rng = jax.random.split(rng)
        out = self.jitted_sample(variables, (low.shape[0], *self.image_shape()), s_rng,
                                 cond=self.condition(low, c_rng), num_steps=num_steps)
        return jnp.clip(out + self.upsample(low), -1.0, 1.0) if self.residual else out

    def _held_out(self, source, num: int) -> np.ndarray:
        n = min(len(source), num)
        if n < 1:
            raise InputError("data source (val split): no held-out images to super-resolve")
        return np.stack([source[i]["image"] for i in range(n)]).astype(np.float32)

    def _compare(self, state, source, num: int, steps, rng, out_dir: str) -> dict:
        """Super-resolve `num` held-out images; write low / bilinear / SR / high-res grids; PSNR (dB) of SR and
        of bilinear; the full SR report against interpolation (`jaxdiff.evaluators.super_resolution`)."""
        high = self._held_out(source, num)
        low = np.asarray(area_downsample(jnp.asarray(high), self.low_size))
        sr = np.asarray(jax.device_get(self.upscale(state.variables(ema=True), low, rng, num_steps=steps)))
        bilinear = np.asarray(jax.image.resize(low, high.shape, "bilinear"))
        paths = reporting.write_sr_grids(out_dir, {"low_res": low, "bilinear": bilinear, "sr": sr, "high_res": high},
                                         sr)
        psnr = lambda x: float(10 * np.log10(1.0 / max(np.mean((to_unit(x) - to_unit(high)) ** 2), 1e-12)))
        report = {"psnr_sr": psnr(sr), "psnr_bilinear": psnr(bilinear), **{f"{k}_png": v for k, v in paths.items()}}
        report["sr_report"] = sr_report(to_unit(high), to_unit(low), {"sr_ddpm": to_unit(sr)}, out_dir)
        return report

    def finalize(self, state, workdir, val_source, rng) -> dict:
        num = int(self.config.get("sample", {}).get("num", 16))
        progress_line(f"scoring the val split: {min(num, len(val_source))} images super-resolved "
                      f"({self.sampler_text()}) against bilinear")
        report = self._compare(state, val_source, num, None, rng, os.path.join(workdir, "samples"))
        return {**report, "num_scored": min(num, len(val_source))}

    def sample_to_files(self, state, out_dir: str, num: int, steps, rng) -> list[str]:
        """`jaxdiff.sample`: super-resolve `num` held-out (val) images; grids and one PNG per SR image."""
        from jaxdiff import data
        report = self._compare(state, data.get_source(self.config.data, "val"), num, steps, rng, out_dir)
        extra = report.get("sr_report", {}).get("files", {})
        return [v for k, v in report.items() if k.endswith("_png")] + [str(v) for v in extra.values()]
