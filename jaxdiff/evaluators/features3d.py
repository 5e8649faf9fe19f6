"""Distribution distances between sets of 3D volumes on features of a pluggable 3D encoder.

The default extractor, "random_conv3d", is a small 3D CNN with FIXED RANDOM weights (seed 0): it is NOT a
trained medical encoder, so its MMD/FID numbers compare runs of this project with each other and are not
comparable to published 3D FID values (which use MedicalNet or Med3D ResNets). A random convolutional
network still gives features sensitive to intensity statistics, texture and multi-scale structure, which is
what a distribution distance between real and generated volumes needs offline. To use a trained encoder,
pass any callable `fn(volumes (N, D, H, W, C)) -> (N, F)` (e.g. a Flax port of a MedicalNet ResNet) as the
extractor, or a weights file for the default architecture (`save_weights` writes one).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jaxdiff.errors import InputError
from jaxdiff.metrics.distribution import fid, frechet_distance, mmd_rbf  # noqa: F401 (re-export)

KINDS = ("mmd", "fid")


class RandomConv3DEncoder(nn.Module):
    """3x3x3 conv + leaky ReLU layers (stride 1 first, then stride 2) with pooled statistics at every scale.

    Input (N, D, H, W, C); output (N, 2 * sum(features)): the spatial mean and standard deviation of every
    channel of every layer (240 features with the default widths).
    """
    features: Sequence[int] = (8, 16, 32, 64)

    @nn.compact
    def __call__(self, x):
        stats = []
        for i, width in enumerate(self.features):
            x = nn.leaky_relu(nn.Conv(width, (3, 3, 3), strides=1 if i == 0 else 2, padding="SAME")(x), 0.2)
            stats += [jnp.mean(x, axis=(1, 2, 3)), jnp.std(x, axis=(1, 2, 3))]
        return jnp.concatenate(stats, axis=-1)


def _numpy_init(template, seed: int):
    """Parameters shaped like `template` from numpy generators seeded [seed, leaf index]: He-normal kernels
    (std sqrt(2 / fan_in)), zero biases. numpy keeps the default extractor free of PRNG compilation."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    values = []
    for i, leaf in enumerate(leaves):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0
        draw = np.random.default_rng([seed, i]).standard_normal(leaf.shape) * np.sqrt(2.0 / max(fan_in, 1))
        values.append(jnp.asarray(draw if fan_in else np.zeros(leaf.shape), jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, values)


def _random_conv3d_params(module: nn.Module, channels: int, weights: str | None, seed: int):
    """Parameters of `module` for `channels` input channels: random from `seed`, or read from `weights`."""
    template = jax.eval_shape(module.init, jax.ShapeDtypeStruct((2,), jnp.uint32),
                              jax.ShapeDtypeStruct((1, 8, 8, 8, channels), jnp.float32))
    if weights is None:
        return _numpy_init(template, seed)
    if not os.path.isfile(weights):
        raise InputError(f"{weights}: feature extractor weights file not found")
    try:
        with open(weights, "rb") as f:
            params = serialization.from_bytes(template, f.read())
    except Exception as e:  # msgpack and structure errors all mean "not weights for this architecture"
        raise InputError(f"{weights}: not {type(module).__name__} weights ({type(e).__name__}: {e})") from None
    shapes_ok = jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, t: np.shape(a) == t.shape, params, template))
    if not shapes_ok:
        raise InputError(f"{weights}: parameter shapes do not match {type(module).__name__}{module.features}")
    return jax.tree_util.tree_map(jnp.asarray, params)


def save_weights(params, path: str) -> str:
    """Write encoder parameters (as from `RandomConv3DEncoder.init`) to a flax msgpack file; returns path."""
    with open(path, "wb") as f:
        f.write(serialization.to_bytes(params))
    return path


def _batched(apply_fn: Callable, batch_size: int) -> Callable:
    """fn(volumes (N, ...)) -> (N, F) float64 numpy, running `apply_fn` on fixed-size padded chunks."""
    def run(volumes):
        v = np.asarray(volumes, np.float32)
        if v.ndim != 5:
            raise InputError(f"3D features: expected volumes (N, D, H, W, C), got shape {v.shape}")
        outs = []
        for start in range(0, len(v), batch_size):
            chunk = v[start:start + batch_size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
            outs.append(np.asarray(apply_fn(padded))[:len(chunk)])
        return np.concatenate(outs).astype(np.float64)
    return run


def random_conv3d(weights: str | None = None, channels: int = 1, features: Sequence[int] = (8, 16, 32, 64),
                  seed: int = 0, batch_size: int = 4) -> Callable:
    """The default extractor: `RandomConv3DEncoder(features)` with random (seed) or file weights, jitted.

    Returns fn(volumes (N, D, H, W, channels)) -> (N, 2 * sum(features)) float64 numpy.
    """
    module = RandomConv3DEncoder(tuple(features))
    params = _random_conv3d_params(module, channels, weights, seed)
    apply = jax.jit(module.apply)
    return _batched(lambda v: apply(params, v), batch_size)


EXTRACTORS = {"random_conv3d": random_conv3d}


def get_extractor(name: str | Callable = "random_conv3d", weights: str | None = None, **kwargs) -> Callable:
    """A 3D feature extractor fn(volumes (N, D, H, W, C)) -> (N, F).

    Args:
      name: a key of `EXTRACTORS` ("random_conv3d": fixed random weights, see the module docstring), or a
        callable of your own encoder, returned unchanged.
      weights: optional weights file for a named extractor (flax msgpack, see `save_weights`).
      kwargs: further arguments of the named extractor (e.g. channels=, features=, batch_size=).
    """
    if callable(name):
        return name
    if name not in EXTRACTORS:
        raise InputError(f"3D feature extractor {name!r}: expected one of {', '.join(EXTRACTORS)} or a callable")
    return EXTRACTORS[name](weights=weights, **kwargs)


@functools.lru_cache(maxsize=4)
def default_extractor(channels: int = 1) -> Callable:
    """The default "random_conv3d" extractor for `channels` input channels, built (and compiled) once."""
    return get_extractor("random_conv3d", channels=channels)


def distance(real, generated, extractor: str | Callable | None = None, kind: str = "mmd") -> float:
    """Distribution distance between two sets of volumes on 3D encoder features.

    Args:
      real, generated: (N, D, H, W, C) and (M, D', H', W', C) volumes (N, M >= 2).
      extractor: None (the default "random_conv3d" for C channels), a name for `get_extractor`, or a callable
        fn(volumes) -> (N, F).
      kind: "mmd" (unbiased squared MMD with RBF kernels, `jaxdiff.metrics.distribution.mmd_rbf`; reliable
        for small sets) or "fid" (Fréchet distance of the feature Gaussians; needs N, M well above F to be
        meaningful, F = 240 for the default extractor).
    Returns:
      a float; 0 (up to sampling noise) for sets from the same distribution.
    """
    if kind not in KINDS:
        raise InputError(f"3D distance kind {kind!r}: expected one of {', '.join(KINDS)}")
    if extractor is None:
        extractor = default_extractor(int(np.shape(real)[-1]))
    elif isinstance(extractor, str):
        extractor = get_extractor(extractor, channels=int(np.shape(real)[-1]))
    fr, fg = np.asarray(extractor(real), np.float64), np.asarray(extractor(generated), np.float64)
    if len(fr) < 2 or len(fg) < 2:
        raise InputError(f"3D distance: need at least 2 volumes per set, got {len(fr)} and {len(fg)}")
    if kind == "mmd":
        return mmd_rbf(fr, fg)
    return fid(fr, fg)
