"""Unconditional or class-conditional image/volume generation with a diffusion denoiser.

Batch: {"image": (B, ..., C) in [-1, 1], optional "label": (B,) int32}. With `model.num_classes > 0` the label
conditions the model and is dropped to the null class `num_classes` with probability `diffusion.cond_drop`
(classifier-free guidance).

3D (`data.dims = 3`): training examples are whole volumes (`data.image_size`) or, with `data.patch_size`,
random patches labelled with their brain region (`data.pipeline.PatchSource`: the octant of the volume that
holds the patch centre; 8 labels, `model.num_classes = 8`). Sampling makes patches of the training shape, one
per region in turn, with guidance `diffusion.guidance_scale`, or with `sample.whole_volume` unconditional
volumes of `data.image_size` (null label). Outputs: NIfTI files with the affine of the data (a patch is placed
at its region's representative origin, `pipeline.region_start`), orthogonal-slice montages, a real-vs-generated
figure, a diffusion-process figure of sample 0's DDIM trajectory and an interactive Plotly view of sample 0.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import reporting
from jaxdiff.data import pipeline
from jaxdiff.evaluators import features
from jaxdiff.evaluators import generation as generation_eval
from jaxdiff.metrics import distribution
from jaxdiff.tasks.base import progress_line, zeros_like_spec
from jaxdiff.tasks.diffusion_task import DiffusionTask


class GenerationTask(DiffusionTask):
    """Learn p(image) (or p(image | label)); report samples and a pixel-MMD to held-out images."""

    @property
    def num_classes(self) -> int:
        return int(self.config.model.get("num_classes", 0))

    @property
    def dims(self) -> int:
        return int(self.config.data.get("dims", 2))

    def volume_shape(self) -> tuple:
        """(*spatial, C) of a whole data example (`data.image_size`)."""
        d = self.config.data
        size = d.image_size
        spatial = tuple(size) if isinstance(size, (tuple, list)) else (size,) * self.dims
        return (*spatial, int(d.get("channels", 1)))

    def image_shape(self) -> tuple:
        """(*spatial, C) of a training example: the 3D patch with `data.patch_size`, else the whole example."""
        patch = pipeline.patch_size(self.config.data) if self.dims == 3 else None
        return (*patch, self.volume_shape()[-1]) if patch else self.volume_shape()

    def example_batch(self, batch_size: int) -> dict:
        spec = {"image": (self.image_shape(), np.float32)}
        if self.num_classes:
            spec["label"] = ((), np.int32)
        return zeros_like_spec(spec, batch_size)

    def _cond(self, batch, rng=None):
        if not self.num_classes:
            return None
        label = batch["label"].astype(jnp.int32)
        p = float(self.config.diffusion.get("cond_drop", 0.1))
        if rng is not None and p > 0:
            label = jnp.where(jax.random.bernoulli(rng, p, label.shape), self.num_classes, label)
        return {"label": label}

    def model_inputs(self, batch):
        x = jnp.asarray(batch["image"])
        return (x, jnp.zeros((x.shape[0],), jnp.int32), self._cond(batch)), {}

    def loss(self, params, model_state, batch, rng, train=True):
        c_rng, rng = jax.random.split(rng)
        return self.diffusion_loss(params, model_state, batch["image"], self._cond(batch, c_rng if train else None),
                                   rng, train)

    def generate(self, variables, num: int, rng, labels=None, num_steps=None):
        """Draw `num` samples (num, ..., C); `labels` (num,) for a class-conditional model; `num_steps`
        overrides diffusion.sample_steps (DDIM)."""
        cond = uncond = None
        if self.num_classes:
            labels = jnp.zeros((num,), jnp.int32) if labels is None else jnp.asarray(labels, jnp.int32)
            cond, uncond = {"label": labels}, {"label": jnp.full((num,), self.num_classes, jnp.int32)}
        return self.jitted_sample(variables, (num, *self.image_shape()), rng, cond=cond, uncond=uncond,
                                  num_steps=num_steps)

    def finalize(self, state, workdir, val_source, rng) -> dict:
        """Sample `sample.num` images with the EMA parameters, save a grid (3D: volumes and figures, see the
        module docstring), compare with held-out images (pixel MMD on pooled intensities)."""
        num = int(self.config.get("sample", {}).get("num", 16))
        progress_line(f"scoring the val split: {num} generated {'volumes' if self.dims == 3 else 'images'} "
                      f"({self.sampler_text()}) against held-out ones")
        if self.dims == 3:
            step = int(jax.device_get(state.step))
            out = os.path.join(workdir, "samples", f"step{step:06d}")
            samples, paths = self._volumes_to_files(state, out, num, None, rng, val_source)
            ref = self._references(val_source, samples.shape[1:], num)
            return {**generation_eval.volume_metrics(samples, ref),
                    "samples_dir": out, "files": len(paths), "num_scored": len(samples)}
        variables = state.variables(ema=True)
        samples = np.asarray(jax.device_get(self.generate(variables, num, rng)))
        step = int(jax.device_get(state.step))
        path = reporting.sample_grid(samples, os.path.join(workdir, "samples", f"samples_step{step:06d}.png"))
        ref = np.stack([val_source[i]["image"] for i in range(min(len(val_source), max(num, 2)))])
        out = {"pixel_mmd": distribution.mmd_rbf(distribution.pooled_pixels(samples), distribution.pooled_pixels(ref)),
               "samples_png": path, "num_scored": len(samples)}
        if self.config.get("sample", {}).get("kid", False):
            out.update(self._kid(variables, val_source, jax.random.fold_in(rng, 1)))
        return out

    def _kid(self, variables, val_source, rng) -> dict:
        """KID (Keras DDIM example) of `sample.kid_num` images drawn with `sample.kid_steps` DDIM steps against as
        many held-out images, on the `sample.kid_features` extractor (`sample.kid_weights` file if it needs one)."""
        s = self.config.sample
        extractor = features.get_extractor(s.get("kid_features", "in_project"), s.get("kid_weights", "") or None,
                                           resize_to=int(s.get("kid_image_size", 75)) or None)
        n = min(len(val_source), int(s.get("kid_num", 64)))
        real = np.stack([val_source[i]["image"] for i in range(n)])
        fake = np.asarray(jax.device_get(self.generate(variables, n, rng, num_steps=int(s.get("kid_steps", 5)))))
        return generation_eval.kid(extractor, real, fake)

    def sample_to_files(self, state, out_dir: str, num: int, steps, rng) -> list[str]:
        """`jaxdiff.sample`: a grid PNG plus one PNG per sample (2D); NIfTI volumes and figures (3D)."""
        if self.dims == 3:
            return self._volumes_to_files(state, out_dir, num, steps, rng, None)[1]
        samples = np.asarray(jax.device_get(self.generate(state.variables(ema=True), num, rng, num_steps=steps)))
        return reporting.write_image_samples(samples, out_dir)

    # --- 3D -------------------------------------------------------------------------------------------
    def _whole_volume(self) -> bool:
        return bool(self.config.get("sample", {}).get("whole_volume", False))

    def generate_volumes(self, variables, num: int, rng, num_steps=None):
        """3D sampling in one scan. Returns (samples (num, X, Y, Z, C), region labels (num,) int or None
        (whole volumes / unconditional), DDIM trajectory of sample 0 (S, X, Y, Z, C)) as NumPy arrays."""
        whole = self._whole_volume()
        shape = (num, *(self.volume_shape() if whole else self.image_shape()))
        labels = None if whole or not self.num_classes else np.arange(num) % self.num_classes
        cond = uncond = None
        if labels is not None:
            cond = {"label": jnp.asarray(labels, jnp.int32)}
            uncond = {"label": jnp.full((num,), self.num_classes, jnp.int32)}
        x, traj = self.jitted_sample(variables, shape, rng, cond=cond, uncond=uncond, num_steps=num_steps,
                                     return_trajectory=True)
        return np.asarray(jax.device_get(x)), labels, np.asarray(jax.device_get(traj[:, 0]))

    def _affines(self, source, labels, num: int) -> list:
        """Voxel -> mm affine per sample: the data's (first volume of `source`), shifted to each patch's region
        origin for patch samples."""
        volumes = getattr(source, "volumes", source)
        base = np.asarray(volumes[0]["affine"], np.float64)
        if labels is None:
            return [base] * num
        spatial = self.volume_shape()[:-1]
        shifts = []
        for label in labels:
            shift = np.eye(4)
            shift[:3, 3] = pipeline.region_start(label, self.image_shape()[:-1], spatial)
            shifts.append(base @ shift)
        return shifts

    def _references(self, source, shape, num: int) -> np.ndarray:
        """Up to max(num, 2) real examples of `shape` (X, Y, Z, C), spread evenly over `source`: whole volumes
        or patches."""
        volumes = getattr(source, "volumes", source)
        ref = source if tuple(source[0]["image"].shape) == tuple(shape) else volumes
        picks = np.unique(np.linspace(0, len(ref) - 1, min(len(ref), max(num, 2))).round().astype(int))
        return np.stack([ref[int(i)]["image"] for i in picks])

    def _volumes_to_files(self, state, out_dir: str, num: int, steps, rng, source):
        """Sample and write NIfTI + montage per sample, real-vs-generated, process figure and HTML view of
        sample 0 into `out_dir` (`reporting.write_volume_samples`). Returns (samples, written paths)."""
        source = source if source is not None else pipeline.get_source(self.config.data, "val")
        samples, labels, traj = self.generate_volumes(state.variables(ema=True), num, rng, num_steps=steps)
        affines = self._affines(source, labels, num)
        real = self._references(source, samples.shape[1:], num)[:num]
        return samples, reporting.write_volume_samples(out_dir, samples, affines, real, traj, labels)
