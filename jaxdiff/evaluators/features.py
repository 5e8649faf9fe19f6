"""Image feature extractors (networks) for FID / KID / Inception Score and an LPIPS-style perceptual distance.

`get_extractor(name, weights=None)` returns an `Extractor`: `extractor(images)` maps (N, H, W, C) images in
[-1, 1] (C = 1 or 3; grey is repeated to RGB) to (N, F) features, `extractor.outputs(images)` also gives the
logits where the network has a classifier (for the Inception Score), `extractor.layers(images)` the multi-layer
feature maps the perceptual distance uses, and `extractor.description` the line every report must carry.

- "in_project" (default, offline): a fixed-seed random conv net (4 stages of 3x3 conv + ReLU, widths 32, 64,
  128, 256, 2x average pooling between stages, He-normal weights from NumPy seed 0); features are the global
  means of the 4 stages (F = 480).
  Not Inception: its FID/KID are only comparable with each other, never with published numbers. No logits.
- "inception": the FID InceptionV3 (`jaxdiff.models.inception`, pytorch-fid's variant) from the weights file
  the user gives, pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`; pool3 features (F = 2048) and 1008
  logits; images are resized to 299 (bilinear) inside, as pytorch-fid does.

Networks run jitted on fixed-size batches (the last one padded), so a data set costs one compile; the jitted
functions are module-level, so extractors made again (e.g. per report) reuse the compiled code. The distances
on the features (FID, KID, Inception Score, the layer distance `lpips_from_layers`) are plain functions in
`jaxdiff.metrics.distribution`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.metrics.distribution import lpips_from_layers
from jaxdiff.models import inception

IN_PROJECT_DESCRIPTION = "features: in-project random encoder (not Inception; not comparable to published FID)"
INCEPTION_LAYERS = ("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c")


class RandomEncoder(nn.Module):
    """Random conv net: per stage (2x average pool except first) -> 3x3 conv -> ReLU. (B,H,W,3) -> list of maps."""
    widths: tuple = (32, 64, 128, 256)

    @nn.compact
    def __call__(self, x):
        maps = []
        for i, width in enumerate(self.widths):
            if i:
                x = nn.avg_pool(x, (2, 2), (2, 2))
            x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}")(x))
            maps.append(x)
        return maps


@dataclasses.dataclass(frozen=True)
class Extractor:
    """Features of (N, H, W, C) images in [-1, 1]; see the module docstring.

    Attributes:
      name, description: the extractor's name and the line reports print about it.
      forward: jitted (B, H, W, 3) -> {"features": (B, F)[, "logits": (B, K)]}.
      layer_fn: jitted (B, H, W, 3) -> tuple of (B, h, w, c) feature maps.
      batch_size: images per jitted call.
    """
    name: str
    description: str
    forward: Callable
    layer_fn: Callable
    batch_size: int = 50

    def outputs(self, images) -> dict:
        """{"features": (N, F)[, "logits": (N, K)]} as NumPy float32, computed batch by batch."""
        x = _rgb(images)
        size = min(self.batch_size, len(x))
        chunks = [jax.device_get(self.forward(_pad(x[i:i + size], size))) for i in range(0, len(x), size)]
        return {k: np.concatenate([c[k] for c in chunks])[: len(x)] for k in chunks[0]}

    def __call__(self, images) -> np.ndarray:
        """(N, H, W, C) in [-1, 1] -> (N, F) features."""
        return self.outputs(images)["features"]

    def layers(self, images) -> tuple:
        """(N, H, W, C) in [-1, 1] -> tuple of (N, h, w, c) feature maps (JAX arrays), one jitted call."""
        return self.layer_fn(_rgb(images))


def _rgb(images) -> np.ndarray:
    """(N, H, W, 1 or 3) finite images -> float32 (N, H, W, 3) host array (batches go to the device one by one)."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0:
        raise InputError(f"features: expected (N, H, W, 1 or 3) images, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("features: NaN or inf in the images")
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _pad(x, size: int) -> np.ndarray:
    """Pad the batch axis to `size` by repeating the last image (keeps one compiled shape)."""
    return x if len(x) == size else np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


@functools.lru_cache(maxsize=1)
def he_normal_params(seed: int = 0) -> dict:
    """`RandomEncoder` variables drawn on the host: kernels N(0, 2 / fan_in) (NumPy PCG64, `seed`), biases 0.

    Host sampling costs no XLA compile (a jitted `init` of this small net takes seconds on a busy CPU).
    """
    shapes = jax.eval_shape(RandomEncoder().init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if len(leaf.shape) == 1:
            return np.zeros(leaf.shape, np.float32)
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))).astype(np.float32)

    return jax.tree.map(draw, shapes)


@jax.jit
def _encoder_maps(params, x):
    return tuple(RandomEncoder().apply(params, x))


@jax.jit
def _encoder_features(params, x):
    return {"features": jnp.concatenate([m.mean(axis=(1, 2)) for m in _encoder_maps(params, x)], axis=-1)}


def _in_project(batch_size: int) -> Extractor:
    params = he_normal_params(0)
    return Extractor("in_project", IN_PROJECT_DESCRIPTION, functools.partial(_encoder_features, params),
                     functools.partial(_encoder_maps, params), batch_size)


def _inception(weights, batch_size: int, resize_to: Optional[int]) -> Extractor:
    if weights is None:
        raise InputError(f"feature extractor 'inception' needs weights=PATH to pytorch-fid's {inception.FID_WEIGHTS} "
                         f"(github.com/mseitzer/pytorch-fid releases); offline, use 'in_project'")
    variables = inception.load_torch_state_dict(weights, fid_variant=True)
    model = inception.InceptionV3(fid_variant=True, resize_to=resize_to)

    @jax.jit
    def forward(v, x):
        with jax.default_matmul_precision("highest"):  # fp32 convs on TPU / TF32 GPUs, as the published numbers
            out = model.apply(v, x)
        return {"features": out["pool3"], "logits": out["logits"]}

    @jax.jit
    def maps(v, x):
        _, state = model.apply(v, x, capture_intermediates=lambda m, method: m.name in INCEPTION_LAYERS)
        return tuple(state["intermediates"][name]["__call__"][0] for name in INCEPTION_LAYERS)

    where = "given state dict" if isinstance(weights, dict) else os.fspath(weights)
    return Extractor("inception", f"features: FID InceptionV3 pool3 (pytorch-fid weights, {where})",
                     functools.partial(forward, variables), functools.partial(maps, variables), batch_size)


def get_extractor(name: str = "in_project", weights=None, *, batch_size: int = 50,
                  resize_to: Optional[int] = 299) -> Extractor:
    """The feature extractor `name` ("in_project" or "inception"; see the module docstring).

    Args:
      weights: for "inception", the path of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (or an .npz /
        dict with its keys); InputError naming that file when missing.
      batch_size: images per jitted call.
      resize_to: Inception input side (299 as published; None feeds images as given, sides >= 75).
    """
    if name == "in_project":
        return _in_project(batch_size)
    if name == "inception":
        return _inception(weights, batch_size, resize_to)
    raise InputError(f"feature extractor {name!r} unknown; known: 'in_project', 'inception'")


def perceptual_distance(a, b, extractor=None, batch_size: int = 16) -> np.ndarray:
    """LPIPS-style distance between image batches a, b (N, H, W, C) in [-1, 1], per image -> (N,) float32.

    Multi-layer feature maps of each image are unit-normalised over channels; squared differences are summed
    over channels, averaged over positions and then over layers (0 = same features, at most 4). LPIPS proper
    weights channels with learned linear heads on AlexNet/VGG; without those weights this is the unweighted
    variant, on the extractor's layers (the in-project random encoder by default, or Inception's
    Conv2d_2b, Conv2d_4a, Mixed_5d, Mixed_6e and Mixed_7c). Values are only comparable for the same extractor.

    `extractor`: an `Extractor` (its `layers` are used) or any callable (B, H, W, C) images in [-1, 1] ->
    sequence of (B, h, w, c) feature maps; default the in-project random encoder. Runs in padded batches.
    """
    extractor = extractor or get_extractor("in_project")
    layers = extractor.layers if isinstance(extractor, Extractor) else extractor
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise InputError(f"perceptual_distance: shapes {a.shape} and {b.shape} differ")
    size = min(batch_size, len(a))
    out = [lpips_from_layers(tuple(layers(_pad(a[i:i + size], size))), tuple(layers(_pad(b[i:i + size], size))))
           for i in range(0, len(a), size)]
    return np.concatenate([np.asarray(d) for d in out])[: len(a)]
