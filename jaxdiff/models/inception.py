"""InceptionV3 in Flax (channels-last, BatchNorm in inference), for FID / KID / Inception Score features.

The architecture and submodule names are torchvision's `Inception3` (`Conv2d_1a_3x3/conv`, `.../bn`,
`Mixed_5b/branch1x1/...`, `fc`), so a PyTorch state dict maps 1:1 (`load_torch_state_dict`). With
`fid_variant=True` it is pytorch-fid's "FID Inception" (the TF 2015-12-05 graph used by every published FID):
FIDInceptionA/C/E_1 average pools exclude the padding, FIDInceptionE_2 max-pools, and 1008 logits.

Input convention: RGB images in [-1, 1], (B, H, W, 3). This is what the network sees after pytorch-fid's
`normalize_input` (2x - 1 of [0, 1] images) and after torchvision's `transform_input=True` (its ImageNet
weights). Images are resized to `resize_to` x `resize_to` (299) with bilinear interpolation, half-pixel
centres and no antialiasing (torch's `F.interpolate(..., mode="bilinear", align_corners=False)`, as
pytorch-fid); `resize_to=None` skips that and needs H, W >= 75.
Parameter counts (1000 classes): 23,834,568; with `aux_logits=True` 27,161,264 (torchvision's inception_v3);
FID variant (1008 classes, no aux head) 23,850,960.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import InputError
from jaxdiff.models import register

FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics unless training) -> ReLU; (B,H,W,C) -> (B,H',W',F).

    `padding` is symmetric per axis (ph, pw) as in torch's Conv2d.
    """
    features: int
    kernel: tuple = (1, 1)
    stride: int = 1
    padding: tuple = (0, 0)

    @nn.compact
    def __call__(self, x, train: bool = False):
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel), _pair(self.stride), padding=((ph, ph), (pw, pw)),
                    use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def pool3x3(x, kind: str):
    """3x3 stride-1 pooling of a pool branch: "avg" (padding counted, torchvision), "avg_exclude_pad" or "max"."""
    pad = ((1, 1), (1, 1))
    if kind == "max":
        return nn.max_pool(x, (3, 3), (1, 1), pad)
    return nn.avg_pool(x, (3, 3), (1, 1), pad, count_include_pad=kind == "avg")


def max_pool_s2(x):
    """3x3 stride-2 max pool without padding (the grid reductions)."""
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


def _chain(x, train, *convs):
    for conv in convs:
        x = conv(x, train)
    return x


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pool branches (64 + 64 + 96 + pool_features channels)."""
    pool_features: int
    pool: str = "avg"

    @nn.compact
    def __call__(self, x, train: bool = False):
        b5 = _chain(x, train, BasicConv(48, name="branch5x5_1"), BasicConv(64, 5, padding=2, name="branch5x5_2"))
        b3 = _chain(x, train, BasicConv(64, name="branch3x3dbl_1"), BasicConv(96, 3, padding=1, name="branch3x3dbl_2"),
                    BasicConv(96, 3, padding=1, name="branch3x3dbl_3"))
        bp = BasicConv(self.pool_features, name="branch_pool")(pool3x3(x, self.pool), train)
        return jnp.concatenate([BasicConv(64, name="branch1x1")(x, train), b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """35 -> 17 grid reduction: stride-2 3x3, double 3x3 and max-pool branches."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        b3 = BasicConv(384, 3, stride=2, name="branch3x3")(x, train)
        bd = _chain(x, train, BasicConv(64, name="branch3x3dbl_1"), BasicConv(96, 3, padding=1, name="branch3x3dbl_2"),
                    BasicConv(96, 3, stride=2, name="branch3x3dbl_3"))
        return jnp.concatenate([b3, bd, max_pool_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (4 x 192 channels)."""
    channels_7x7: int
    pool: str = "avg"

    @nn.compact
    def __call__(self, x, train: bool = False):
        c7 = self.channels_7x7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        b7 = _chain(x, train, BasicConv(c7, name="branch7x7_1"), BasicConv(c7, **row, name="branch7x7_2"),
                    BasicConv(192, **col, name="branch7x7_3"))
        bd = _chain(x, train, BasicConv(c7, name="branch7x7dbl_1"),
                    *[BasicConv(c7 if i < 5 else 192, **(col if i % 2 == 0 else row), name=f"branch7x7dbl_{i}")
                      for i in range(2, 6)])
        bp = BasicConv(192, name="branch_pool")(pool3x3(x, self.pool), train)
        return jnp.concatenate([BasicConv(192, name="branch1x1")(x, train), b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """17 -> 8 grid reduction: 3x3 and 7x7x3 stride-2 branches and a max pool."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        b3 = _chain(x, train, BasicConv(192, name="branch3x3_1"), BasicConv(320, 3, stride=2, name="branch3x3_2"))
        b7 = _chain(x, train, BasicConv(192, name="branch7x7x3_1"),
                    BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2"),
                    BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3"),
                    BasicConv(192, 3, stride=2, name="branch7x7x3_4"))
        return jnp.concatenate([b3, b7, max_pool_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3 / 3x1 filter banks (320 + 768 + 768 + 192 = 2048 channels)."""
    pool: str = "avg"

    @nn.compact
    def __call__(self, x, train: bool = False):
        def split(h, prefix):
            return jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name=f"{prefix}a")(h, train),
                                    BasicConv(384, (3, 1), padding=(1, 0), name=f"{prefix}b")(h, train)], axis=-1)

        b3 = split(BasicConv(384, name="branch3x3_1")(x, train), "branch3x3_2")
        bd = split(_chain(x, train, BasicConv(448, name="branch3x3dbl_1"),
                          BasicConv(384, 3, padding=1, name="branch3x3dbl_2")), "branch3x3dbl_3")
        bp = BasicConv(192, name="branch_pool")(pool3x3(x, self.pool), train)
        return jnp.concatenate([BasicConv(320, name="branch1x1")(x, train), b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid (training-time head of torchvision's model)."""
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.avg_pool(x, (5, 5), (3, 3), "VALID")
        x = _chain(x, train, BasicConv(128, name="conv0"), BasicConv(768, 5, name="conv1"))
        return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


def resize_bilinear(x, size: int):
    """(B, H, W, C) -> (B, size, size, C), bilinear, half-pixel centres, no antialias (torch align_corners=False)."""
    return jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "bilinear", antialias=False)


@register("inception_v3")
class InceptionV3(nn.Module):
    """InceptionV3 returning {"pool3": (B, 2048), "logits": (B, num_classes)} (+ "aux_logits" if enabled).

    Attributes:
      fid_variant: pytorch-fid's FID Inception blocks (see the module docstring).
      num_classes: logits; None means 1008 for the FID variant, 1000 otherwise.
      aux_logits: add torchvision's auxiliary head (output "aux_logits"; needs a 17x17 grid, i.e. the 299 input).
      resize_to: side the input is resized to (bilinear), or None to use the input as given (H, W >= 75).
      dropout: before `fc` when training.
    Input: (B, H, W, 3) RGB in [-1, 1].
    """
    fid_variant: bool = False
    num_classes: Optional[int] = None
    aux_logits: bool = False
    resize_to: Optional[int] = 299
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if self.resize_to:
            x = resize_bilinear(x, self.resize_to)
        a_pool, e_pools = (("avg_exclude_pad", ("avg_exclude_pad", "max")) if self.fid_variant
                           else ("avg", ("avg", "avg")))
        x = _chain(x, train, BasicConv(32, 3, stride=2, name="Conv2d_1a_3x3"), BasicConv(32, 3, name="Conv2d_2a_3x3"),
                   BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3"))
        x = _chain(max_pool_s2(x), train, BasicConv(80, name="Conv2d_3b_1x1"), BasicConv(192, 3, name="Conv2d_4a_3x3"))
        x = _chain(max_pool_s2(x), train,
                   InceptionA(32, a_pool, name="Mixed_5b"), InceptionA(64, a_pool, name="Mixed_5c"),
                   InceptionA(64, a_pool, name="Mixed_5d"), InceptionB(name="Mixed_6a"),
                   *[InceptionC(c, a_pool, name=f"Mixed_6{k}") for c, k in zip((128, 160, 160, 192), "bcde")])
        out = {}
        num_classes = self.num_classes or (1008 if self.fid_variant else 1000)
        if self.aux_logits:
            out["aux_logits"] = InceptionAux(num_classes, name="AuxLogits")(x, train)
        x = _chain(x, train, InceptionD(name="Mixed_7a"), InceptionE(e_pools[0], name="Mixed_7b"),
                   InceptionE(e_pools[1], name="Mixed_7c"))
        out["pool3"] = jnp.mean(x, axis=(1, 2))
        h = nn.Dropout(self.dropout, deterministic=not train)(out["pool3"])
        out["logits"] = nn.Dense(num_classes, name="fc")(h)
        return out


# --- PyTorch state dict -> Flax variables -------------------------------------------------------------------

_LEAF = {"conv.weight": ("params", "kernel"), "bn.weight": ("params", "scale"), "bn.bias": ("params", "bias"),
         "bn.running_mean": ("batch_stats", "mean"), "bn.running_var": ("batch_stats", "var"),
         "fc.weight": ("params", "kernel"), "fc.bias": ("params", "bias")}


def _read_state_dict(source) -> tuple[dict, str]:
    """{torch key: numpy array} and a name for messages, from a dict, an .npz file or a torch .pth file."""
    if isinstance(source, dict):
        return {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in source.items()}, \
            "state dict"
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise InputError(f"{path}: Inception weights file not found (pytorch-fid's {FID_WEIGHTS} or a torchvision "
                         f"inception_v3 state dict)")
    if path.endswith(".npz"):
        with np.load(path) as f:
            return dict(f), path
    try:
        import torch  # only needed to unpickle .pth files; an .npz of the same keys needs no torch
    except ImportError:
        raise InputError(f"{path}: reading a PyTorch .pth file needs torch; or save the state dict as .npz") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt/unsupported file for the user
        raise InputError(f"{path}: not a readable PyTorch state dict ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict (a dict of tensors), got {type(state).__name__}")
    return _read_state_dict(state.get("state_dict", state))[0], path


def _flax_location(key: str) -> tuple[str, tuple]:
    """torch key "Mixed_5b.branch1x1.conv.weight" -> ("params", ("Mixed_5b", "branch1x1", "conv", "kernel"))."""
    parts = key.split(".")
    leaf = _LEAF.get(".".join(parts[-2:]))
    if leaf is None:
        return "", ()
    collection, name = leaf
    return collection, (*parts[:-1], name)


def _to_flax(name: str, w: np.ndarray) -> np.ndarray:
    if name == "kernel":
        return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
    return w


@functools.lru_cache(maxsize=4)
def _expected_shapes(fid_variant: bool, num_classes: Optional[int], aux_logits: bool) -> tuple:
    """((collection, flax path), shape) of every variable of the model, from `jax.eval_shape` (no compute)."""
    model = InceptionV3(fid_variant=fid_variant, num_classes=num_classes, aux_logits=aux_logits, resize_to=None)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
    return tuple(((c, tuple(k.key for k in path)), leaf.shape) for c in ("params", "batch_stats")
                 for path, leaf in jax.tree_util.tree_flatten_with_path(shapes[c])[0])


def load_torch_state_dict(path_or_dict, fid_variant: bool, num_classes: Optional[int] = None,
                          aux_logits: bool = False) -> dict:
    """Flax variables {"params", "batch_stats"} of `InceptionV3(fid_variant, num_classes, aux_logits)` from a
    PyTorch state dict (torchvision or pytorch-fid key names, e.g. pytorch-fid's `pt_inception-2015-12-05-
    6726825d.pth`): a path to a .pth (needs torch) or .npz file, or a dict of arrays / tensors.

    Conv weights (O, I, kh, kw) become (kh, kw, I, O) kernels, Linear weights are transposed, BatchNorm
    running statistics go to "batch_stats"; `num_batches_tracked` and, unless `aux_logits`, the training-only
    `AuxLogits.*` keys are ignored. Raises InputError naming the file for a missing file or keys/shapes that do
    not match the model.
    """
    state, where = _read_state_dict(path_or_dict)
    expected = dict(_expected_shapes(fid_variant, num_classes, aux_logits))
    variables = {"params": {}, "batch_stats": {}}
    for key, w in state.items():
        if key.endswith("num_batches_tracked") or (key.startswith("AuxLogits.") and not aux_logits):
            continue
        collection, path = _flax_location(key)
        if (collection, path) not in expected:
            raise InputError(f"{where}: unexpected key {key!r} for InceptionV3 (fid_variant={fid_variant})")
        w, shape = _to_flax(path[-1], np.asarray(w, np.float32)), expected.pop((collection, path))
        if w.shape != shape:
            raise InputError(f"{where}: {key} is {w.shape} in Flax layout, InceptionV3(fid_variant={fid_variant}, "
                             f"num_classes={num_classes}) expects {shape}")
        node = variables[collection]
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = w
    if expected:
        missing = sorted(".".join(p) for _, p in expected)
        raise InputError(f"{where}: {len(missing)} InceptionV3 weights missing, e.g. {missing[:3]}")
    return jax.device_put(variables)
