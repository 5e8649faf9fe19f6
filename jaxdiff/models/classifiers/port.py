"""Import PyTorch classifier weights: torchvision state dicts (or Hugging Face ResNet / ConvNeXt ones).

    sd = load_state_dict("resnet50-0676ba61.pth")        # {torch key: numpy array}
    variables, skipped = port_state_dict(variables, sd, model, source="resnet50-0676ba61.pth")

`variables` are the Flax model's ({"params", "batch_stats"}, concrete or `jax.eval_shape` structs); the
result holds numpy arrays for every imported leaf. Layout conversions: conv OIHW -> HWIO (depthwise
(C, 1, k, k) -> (k, k, 1, C)), Linear (out, in) -> (in, out), BatchNorm weight/bias/running_mean/running_var ->
scale/bias/mean/var, ConvNeXt layer_scale (C, 1, 1) -> (C,), and VGG's first classifier weight from torch's
(C, 7, 7) flattening order to channels-last (7, 7, C). With `skip_head`, a `head` whose shape differs (e.g.
ImageNet 1000 classes into a 2-class model) keeps its Flax initialisation. Missing, unexpected or mis-shaped
keys raise InputError naming the file and the key.
"""
from __future__ import annotations

import os
import re

import numpy as np
from flax import traverse_util

from jaxdiff.errors import InputError
from jaxdiff.models.classifiers.convnext import ConvNeXt
from jaxdiff.models.classifiers.efficientnet import EfficientNetV2, block_layers
from jaxdiff.models.classifiers.resnet import ResNet
from jaxdiff.models.classifiers.vgg import VGG


def load_state_dict(path: str) -> dict:
    """{key: float32/int numpy array} from a `torch.save`d state dict (or a dict holding one under
    "state_dict" / "model"), read with `torch.load(weights_only=True)` on the CPU."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: weight file not found")
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: reading a PyTorch weight file needs torch installed") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (any unpickling failure is a bad file)
        raise InputError(f"{path}: not a readable PyTorch state dict ({type(e).__name__})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(hasattr(v, "numpy") for v in obj.values()):
        raise InputError(f"{path}: expected a state dict of tensors")
    return {k: (v.float() if v.is_floating_point() else v).cpu().numpy() for k, v in obj.items()}


_CONVNEXT_BLOCK_INDEX = {"dwconv": 0, "layernorm": 2, "pwconv1": 3, "pwconv2": 5}   # torchvision CNBlock.block
# Hugging Face key -> torchvision key (regex, replacement), for ResNetForImageClassification and
# ConvNextForImageClassification checkpoints.
_HF_RULES = (
    (r"^resnet\.embedder\.embedder\.convolution\.", "conv1."),
    (r"^resnet\.embedder\.embedder\.normalization\.", "bn1."),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
    (r"^classifier\.1\.", "fc."),
    (r"^convnext\.embeddings\.patch_embeddings\.", "features.0.0."),
    (r"^convnext\.embeddings\.layernorm\.", "features.0.1."),
    (r"^convnext\.encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.",
     lambda m: f"features.{2 * int(m[1])}.{m[2]}."),
    (r"^convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(dwconv|layernorm|pwconv1|pwconv2)\.",
     lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}.block.{_CONVNEXT_BLOCK_INDEX[m[3]]}."),
    (r"^convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$",
     lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}.layer_scale"),
    (r"^convnext\.layernorm\.", "classifier.0."),
    (r"^classifier\.(weight|bias)$", r"classifier.2.\1"),
)


def from_huggingface(state_dict: dict) -> dict:
    """Rename a Hugging Face ResNet / ConvNeXt state dict to torchvision keys (other dicts are returned as
    they are). Detected by the "resnet." / "convnext." key prefixes."""
    if not any(k.startswith(("resnet.", "convnext.")) for k in state_dict):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _HF_RULES:
            new = re.sub(pattern, repl, key)
            if new != key:
                key = new
                break
        out[key] = value
    return out


# --- the key maps: [(flax path tuple, torch key, convert fn)] -------------------------------------------------
def _conv_w(w):
    return w.transpose(2, 3, 1, 0)              # (O, I/g, kh, kw) -> (kh, kw, I/g, O)


def _linear_w(w):
    return w.T                                  # (out, in) -> (in, out)


def _same(w):
    return w


def _flat(w):
    return w.reshape(-1)


def _conv(flax: str, torch: str, bias: bool = False) -> list:
    p = ("params", *flax.split("/"))
    return [(p + ("kernel",), f"{torch}.weight", _conv_w)] + ([(p + ("bias",), f"{torch}.bias", _same)] if bias else [])


def _dense(flax: str, torch: str, weight_fn=_linear_w) -> list:
    p = ("params", *flax.split("/"))
    return [(p + ("kernel",), f"{torch}.weight", weight_fn), (p + ("bias",), f"{torch}.bias", _same)]


def _norm(flax: str, torch: str, stats: bool) -> list:
    """LayerNorm (`stats` False) or BatchNorm (also running mean / var into "batch_stats")."""
    p = tuple(flax.split("/"))
    out = [(("params", *p, "scale"), f"{torch}.weight", _same), (("params", *p, "bias"), f"{torch}.bias", _same)]
    if stats:
        out += [(("batch_stats", *p, "mean"), f"{torch}.running_mean", _same),
                (("batch_stats", *p, "var"), f"{torch}.running_var", _same)]
    return out


def _resnet(m: ResNet) -> list:
    keys = _conv("conv1", "conv1") + _norm("bn1", "bn1", True)
    for i, depth in enumerate(m.depths):
        for j in range(depth):
            f, t = f"layer{i + 1}_{j}", f"layer{i + 1}.{j}"
            for k in (1, 2, 3):
                keys += _conv(f"{f}/conv{k}", f"{t}.conv{k}") + _norm(f"{f}/bn{k}", f"{t}.bn{k}", True)
            keys += _conv(f"{f}/downsample_conv", f"{t}.downsample.0") + \
                _norm(f"{f}/downsample_bn", f"{t}.downsample.1", True)
    return keys + _dense("head", "fc")


def _vgg(m: VGG) -> list:
    keys, idx, k = [], 0, 0
    for w in m.layers:
        if w == "M":
            idx += 1
        else:
            keys += _conv(f"conv{k}", f"features.{idx}", bias=True)
            idx, k = idx + 2, k + 1

    def fc1(w):  # torch flattens (C, P, P); here (P, P, C)
        p = m.pool_size
        return w.reshape(w.shape[0], -1, p, p).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])

    return keys + _dense("fc1", "classifier.0", fc1) + _dense("fc2", "classifier.3") + _dense("head", "classifier.6")


def _efficientnet(m: EfficientNetV2) -> list:
    keys = _conv("stem_conv", "features.0.0") + _norm("stem_bn", "features.0.1", True)
    cin = m.stem_channels
    for i, (fused, expand, kernel, stride, out, n) in enumerate(m.stages):
        for j in range(n):
            f, t = f"stage{i + 1}_{j}", f"features.{i + 1}.{j}.block"
            for b, (name, *_rest) in enumerate(block_layers(fused, expand, kernel, stride, cin, out)):
                if name == "se":
                    keys += _conv(f"{f}/se/fc1", f"{t}.{b}.fc1", True) + _conv(f"{f}/se/fc2", f"{t}.{b}.fc2", True)
                else:
                    keys += _conv(f"{f}/{name}_conv", f"{t}.{b}.0") + _norm(f"{f}/{name}_bn", f"{t}.{b}.1", True)
            cin = out
    top = len(m.stages) + 1
    return keys + _conv("top_conv", f"features.{top}.0") + _norm("top_bn", f"features.{top}.1", True) + \
        _dense("head", "classifier.1")


def _convnext(m: ConvNeXt) -> list:
    keys = _conv("stem_conv", "features.0.0", True) + _norm("stem_norm", "features.0.1", False)
    for i, depth in enumerate(m.depths):
        if i > 0:
            keys += _norm(f"downsample{i}_norm", f"features.{2 * i}.0", False) + \
                _conv(f"downsample{i}_conv", f"features.{2 * i}.1", True)
        for j in range(depth):
            f, t = f"stage{i + 1}_{j}", f"features.{2 * i + 1}.{j}"
            keys += _conv(f"{f}/dwconv", f"{t}.block.0", True) + _norm(f"{f}/norm", f"{t}.block.2", False) + \
                _dense(f"{f}/pwconv1", f"{t}.block.3") + _dense(f"{f}/pwconv2", f"{t}.block.5") + \
                [(("params", f, "layer_scale"), f"{t}.layer_scale", _flat)]
    return keys + _norm("final_norm", "classifier.0", False) + _dense("head", "classifier.2")


_KEY_MAPS = {ResNet: _resnet, VGG: _vgg, EfficientNetV2: _efficientnet, ConvNeXt: _convnext}


def key_map(model) -> list:
    """[(Flax variable path, torchvision key, numpy convert fn)] for a classifier (entries whose Flax path
    the model does not have, e.g. absent ResNet projections, are dropped by `port_state_dict`)."""
    if type(model) not in _KEY_MAPS:
        raise InputError(f"config key model.name: {type(model).__name__} has no PyTorch weight import "
                         f"(available for {', '.join(c.__name__ for c in _KEY_MAPS)})")
    return _KEY_MAPS[type(model)](model)


def port_state_dict(variables: dict, state_dict: dict, model, source: str = "state dict",
                    skip_head: bool = True) -> tuple[dict, list]:
    """Fill a classifier's Flax variables from a torchvision (or Hugging Face) state dict.

    Args:
      variables: {"params": ..., maybe "batch_stats": ...} of `model` (arrays or ShapeDtypeStructs).
      state_dict: {torch key: numpy array} (see `load_state_dict`).
      model: the Flax classifier (ResNet, VGG, EfficientNetV2 or ConvNeXt).
      source: file name used in error messages.
      skip_head: keep the Flax `head` when its shape differs from the file's (a different `num_classes`).
    Returns:
      (variables with every imported leaf a numpy array of the target dtype, torch keys of a skipped head).
    """
    state_dict = from_huggingface(state_dict)
    flat = traverse_util.flatten_dict(dict(variables))
    entries = [e for e in key_map(model) if e[0] in flat]
    uncovered = set(flat) - {e[0] for e in entries}
    if uncovered:
        raise InputError(f"config key model: {'/'.join(sorted(uncovered)[0])} has no PyTorch counterpart")
    out, used, skipped = dict(flat), set(), []
    for path, key, fn in entries:
        if key not in state_dict:
            raise InputError(f"{source}: missing key {key!r} (for {'/'.join(path)})")
        value, target = fn(np.asarray(state_dict[key])), flat[path]
        used.add(key)
        if value.shape != tuple(target.shape):
            if skip_head and path[1] == "head":
                skipped.append(key)
                continue
            raise InputError(f"{source}: key {key!r} has shape {state_dict[key].shape}; the model needs "
                             f"{tuple(target.shape)} (for {'/'.join(path)})")
        out[path] = value.astype(target.dtype)
    extra = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
    if extra:
        raise InputError(f"{source}: unexpected key {extra[0]!r} ({len(extra)} keys the model does not have)")
    return traverse_util.unflatten_dict(out), skipped
