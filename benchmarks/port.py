"""Port PyTorch reference weights (`benchmarks.torch_models`) to jaxdiff's Flax variables.

Every torch layer maps to one Flax module: its dotted torch path is renamed by the model's mapping table (a few
regular expressions, then "." -> "/") and its tensors are converted by layer type:

  Conv{1,2,3}d weight (O, I, *k)        -> kernel (*k, I, O)                (NCHW/OIHW -> NHWC/HWIO)
  ConvTranspose{1,2,3}d weight (I, O, *k) -> kernel (*k, I, O), spatially flipped (PyTorch's transposed conv is
                                           the gradient of a conv; Flax's `ConvTranspose` does not flip)
  Linear weight (O, I)                  -> kernel (I, O)
  GroupNorm / LayerNorm weight, bias    -> scale, bias (bias absent when the torch layer has none)
  BatchNorm weight, bias; running_mean, running_var -> params scale, bias; batch_stats mean, var
  Embedding weight                      -> embedding
  MultiheadAttention in_proj (3D, D), out_proj (D, D) -> query/key/value kernel (D, heads, D/heads), bias
                                           (heads, D/heads); out kernel (heads, D/heads, D), bias (D,)
  FFParser ff_parser_attn_map (C, H, W) -> same; complex_weight (C, H, W//2+1, 2) -> (H, W//2+1, C, 2)

Every torch parameter must be consumed (a layer the table does not know raises), and no two layers may land
on the same Flax path. The result holds jax arrays, ready for `model.apply({"params": params, ...}, ...)`.
"""
from __future__ import annotations

import re
from typing import Callable

import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from benchmarks.torch_models.medsegdiff import FFParser

Rules = list[tuple[str, str | Callable]]  # (pattern on the dotted torch path, re.sub replacement)

UNET_RULES: Rules = [
    (r"^time_embed\.0\b", "time_embed.dense_0"),
    (r"^time_embed\.2\b", "time_embed.dense_1"),
    (r"^(down|up)\.(\d+)\.(res|attn)\.(\d+)\b", r"\1_\2_\4_\3"),
    (r"^(down|up)\.(\d+)\.(downsample|upsample)\b", r"\1_\2_\3"),
    (r"^mid_res\.(\d+)\b", r"mid_\1_res"),
    (r"\.film$", ".film.dense"),
]

MEDSEGDIFF_RULES: Rules = [
    (r"^time_mlp\.0$", "time_mlp_0"),
    (r"^time_mlp\.2$", "time_mlp_1"),
    (r"^(mask_down|image_down|fusion|mask_resample|image_resample|up|mid_attention|mid_feedforward)\.(\d+)\b",
     r"\1_\2"),
    (r"\.blocks\.(\d+)\b", r".ResBlock_\1"),
    (r"\.attn\b", ".Attention_0"),
    (r"\.resample\.upsample\.conv$", ".Resample_0.Upsample_0.conv"),
    (r"\.resample\.conv$", ".Resample_0.Conv_0"),
    (r"^((?:mask|image)_resample_\d+)\.conv$", r"\1.Conv_0"),
    (r"\.ff_parser$", ".FFParser_0"),
    (r"\.norm$", ".LayerNorm_0"),
    (r"\.out_norm$", ".LayerNorm_1"),
    (r"\.fc1$", ".Dense_0"),
    (r"\.fc2$", ".Dense_1"),
    (r"\.film$", ".film.dense"),
]

TRANSFORMER_UNET_RULES: Rules = [
    (r"^encoders\.(\d+)\b", lambda m: f"enc{int(m[1]) + 1}"),
    (r"^decoders\.(\d+)\b", lambda m: f"up{int(m[1]) + 1}"),
    (r"^bottleneck\.encoder\.layers\.(\d+)\b", lambda m: f"bottleneck.layer{int(m[1]) + 1}"),
]

ERROR_VAE_RULES: Rules = [
    (r"^encoder\.(\d+)$", lambda m: f"enc{int(m[1]) + 1}"),
    (r"^decoder\.(\d+)$", lambda m: f"dec{int(m[1]) + 1}"),
]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def _spatial_last(w: np.ndarray, in_axis: int, out_axis: int) -> np.ndarray:
    """(a, b, *k) conv-style weight -> (*k, w[in_axis], w[out_axis])."""
    return w.transpose(*range(2, w.ndim), in_axis, out_axis)


def _with_bias(m: nn.Module, out: dict) -> dict:
    if getattr(m, "bias", None) is not None:
        out["bias"] = _np(m.bias)
    return out


def _multihead_attention(m: nn.MultiheadAttention) -> dict:
    d, heads = m.embed_dim, m.num_heads
    if not m._qkv_same_embed_dim or m.in_proj_bias is None:
        raise ValueError("only MultiheadAttention with one in_proj and biases is supported")
    w, b = _np(m.in_proj_weight), _np(m.in_proj_bias)
    out = {name: {"kernel": w[i * d:(i + 1) * d].T.reshape(d, heads, d // heads),
                  "bias": b[i * d:(i + 1) * d].reshape(heads, d // heads)}
           for i, name in enumerate(("query", "key", "value"))}
    out["out"] = {"kernel": _np(m.out_proj.weight).T.reshape(heads, d // heads, d), "bias": _np(m.out_proj.bias)}
    return out


def _ffparser(m: FFParser) -> dict:
    if m.faithful:
        return {"ff_parser_attn_map": _np(m.ff_parser_attn_map)}
    return {"complex_weight": _np(m.complex_weight).transpose(1, 2, 0, 3)}


def _convert(m: nn.Module) -> dict | None:
    """{"params": {...}, maybe "batch_stats": {...}} for a known layer `m`, None for containers."""
    if isinstance(m, nn.MultiheadAttention):
        return {"params": _multihead_attention(m)}
    if isinstance(m, FFParser):
        return {"params": _ffparser(m)}
    if isinstance(m, _CONV_TRANSPOSES):
        w = np.flip(_np(m.weight), axis=tuple(range(2, m.weight.ndim)))
        return {"params": _with_bias(m, {"kernel": np.ascontiguousarray(_spatial_last(w, 0, 1))})}
    if isinstance(m, _CONVS):
        return {"params": _with_bias(m, {"kernel": _spatial_last(_np(m.weight), 1, 0)})}
    if isinstance(m, nn.Linear):
        return {"params": _with_bias(m, {"kernel": _np(m.weight).T})}
    if isinstance(m, _BATCH_NORMS):
        return {"params": {"scale": _np(m.weight), "bias": _np(m.bias)},
                "batch_stats": {"mean": _np(m.running_mean), "var": _np(m.running_var)}}
    if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
        return {"params": _with_bias(m, {"scale": _np(m.weight)})}
    if isinstance(m, nn.Embedding):
        return {"params": {"embedding": _np(m.weight)}}
    return None


def _rename(path: str, rules: Rules) -> list[str]:
    for pattern, replacement in rules:
        path = re.sub(pattern, replacement, path)
    return path.split(".")


def _insert(tree: dict, path: list[str], leaves: dict, where: str) -> None:
    node = tree
    for key in path:
        node = node.setdefault(key, {})
    if set(node) & set(leaves):
        raise ValueError(f"two torch layers map to the Flax path {'/'.join(path)} (from {where})")
    node.update(leaves)


def port(module: nn.Module, rules: Rules) -> dict:
    """Flax variables {"params": ..., ["batch_stats": ...]} of a torch module, renamed by `rules`.

    Raises ValueError if a torch parameter belongs to no known layer or two layers collide.
    """
    variables: dict = {}
    consumed: set = set()
    done_prefixes: list = []
    for name, m in module.named_modules():
        if any(name.startswith(p) for p in done_prefixes):
            continue
        converted = _convert(m)
        if converted is None:
            continue
        done_prefixes.append(name + ".")
        consumed.update(id(p) for p in m.parameters())
        for collection, leaves in converted.items():
            _insert(variables.setdefault(collection, {}), _rename(name, rules), leaves, name)
    missing = [n for n, p in module.named_parameters() if id(p) not in consumed]
    if missing:
        raise ValueError(f"torch parameters with no Flax counterpart: {missing}")
    return _to_jax(variables)


def _to_jax(tree):
    if isinstance(tree, dict):
        return {k: _to_jax(v) for k, v in tree.items()}
    return jnp.asarray(tree)


def port_unet(module: nn.Module) -> dict:
    """`benchmarks.torch_models.unet.UNet` -> params of `jaxdiff.models.unet.UNet`."""
    return port(module, UNET_RULES)["params"]


def port_medsegdiff(module: nn.Module) -> dict:
    """`benchmarks.torch_models.medsegdiff.MedSegDiff` -> params of `jaxdiff.models.medsegdiff.MedSegDiff`."""
    return port(module, MEDSEGDIFF_RULES)["params"]


def port_transformer_unet(module: nn.Module) -> tuple[dict, dict]:
    """`torch_models.transformer_unet.TransformerUNet` -> (params, batch_stats) of jaxdiff's TransformerUNet
    (BatchNorm running statistics become the "batch_stats" collection)."""
    variables = port(module, TRANSFORMER_UNET_RULES)
    return variables["params"], variables["batch_stats"]


def port_error_vae(module: nn.Module) -> dict:
    """`torch_models.transformer_unet.ErrorVAE` -> params of `jaxdiff.models.transformer_unet.ErrorVAE`."""
    return port(module, ERROR_VAE_RULES)["params"]
