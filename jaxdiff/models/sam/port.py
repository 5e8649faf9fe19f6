"""Import SAM weights from a file the user gives (nothing is ever downloaded).

Two layouts are read:
- the official release state dict (`sam_vit_b_01ec64.pth`; keys image_encoder.*, prompt_encoder.*,
  mask_decoder.*), read with `torch.load(weights_only=True)` (torch is imported only here, lazily);
- the Hugging Face `SamModel` layout (vision_encoder.*, prompt_encoder.*, mask_decoder.*,
  shared_image_embedding.*): a `facebook/sam-vit-base` folder (model.safetensors or pytorch_model.bin, with
  config.json) or one .safetensors / .bin file.

Hugging Face names are first renamed to the official ones (`hf_to_official`, the inverse of transformers'
convert_sam_to_hf.py), then official names map to Flax paths (`official_to_flax`): `blocks.3` -> `blocks_3`,
Sequential indices -> named layers, Linear weights transposed, Conv (O, I, kh, kw) -> (kh, kw, I, O),
ConvTranspose (I, O, kh, kw) -> spatially flipped (kh, kw, I, O) (lax.conv_transpose does not flip).
The architecture (ViT-B/L/H or a tiny test model) is read from the tensor shapes (`config_from_state`).
"""
from __future__ import annotations

import json
import os
import re

import jax
import numpy as np

from jaxdiff.errors import InputError

NEEDED = ("sam_vit_b_01ec64.pth from the official segment-anything release, or a Hugging Face "
          "facebook/sam-vit-base folder (model.safetensors + config.json) or its model.safetensors; "
          "nothing is downloaded")

# official Sequential members -> Flax module names (applied to the module path, without the leaf name)
_OFFICIAL_TO_FLAX = [
    (r"\.patch_embed\.proj$", ".patch_embed"),
    (r"\.neck\.0$", ".neck.conv1"), (r"\.neck\.1$", ".neck.ln1"),
    (r"\.neck\.2$", ".neck.conv2"), (r"\.neck\.3$", ".neck.ln2"),
    (r"\.mask_downscaling\.0$", ".mask_downscaling.conv1"), (r"\.mask_downscaling\.1$", ".mask_downscaling.ln1"),
    (r"\.mask_downscaling\.3$", ".mask_downscaling.conv2"), (r"\.mask_downscaling\.4$", ".mask_downscaling.ln2"),
    (r"\.mask_downscaling\.6$", ".mask_downscaling.conv3"),
    (r"\.output_upscaling\.0$", ".upscale_conv1"), (r"\.output_upscaling\.1$", ".upscale_ln"),
    (r"\.output_upscaling\.3$", ".upscale_conv2"),
]

# Hugging Face names -> official names (order matters: specific layer norms before the generic rule)
_HF_TO_OFFICIAL = [
    (r"^vision_encoder\.layers\.", "image_encoder.blocks."), (r"^vision_encoder\.", "image_encoder."),
    (r"\.patch_embed\.projection\.", ".patch_embed.proj."),
    (r"\.neck\.conv1\.", ".neck.0."), (r"\.neck\.layer_norm1\.", ".neck.1."),
    (r"\.neck\.conv2\.", ".neck.2."), (r"\.neck\.layer_norm2\.", ".neck.3."),
    (r"\.mask_embed\.conv1\.", ".mask_downscaling.0."), (r"\.mask_embed\.layer_norm1\.", ".mask_downscaling.1."),
    (r"\.mask_embed\.conv2\.", ".mask_downscaling.3."), (r"\.mask_embed\.layer_norm2\.", ".mask_downscaling.4."),
    (r"\.mask_embed\.conv3\.", ".mask_downscaling.6."),
    (r"\.point_embed\.", ".point_embeddings."),
    (r"\.shared_embedding\.positional_embedding$", ".pe_layer.positional_encoding_gaussian_matrix"),
    (r"\.upscale_conv1\.", ".output_upscaling.0."), (r"\.upscale_layer_norm\.", ".output_upscaling.1."),
    (r"\.upscale_conv2\.", ".output_upscaling.3."),
    (r"\.layer_norm(\d)\.", r".norm\1."), (r"\.layer_norm_final_attn\.", ".norm_final_attn."),
]
_HF_MLP = re.compile(r"^(.*(?:iou_prediction_head|output_hypernetworks_mlps\.\d+))"
                     r"\.(proj_in|proj_out|layers\.(\d+))\.")
_HF_SHARED_PE = "shared_image_embedding.positional_embedding"
_DROPPED = ("pixel_mean", "pixel_std")     # official buffers; `model.preprocess` applies the same constants


def hf_to_official(state: dict) -> dict:
    """Rename a Hugging Face `SamModel` state dict to the official segment-anything key layout.

    HF's FeedForward `proj_in / layers.k / proj_out` become `layers.0 / layers.k+1 / layers.depth-1`;
    the tied `shared_image_embedding.positional_embedding` is used only when the prompt encoder's copy is absent.
    """
    hidden = {}
    for key in state:
        m = _HF_MLP.match(key)
        if m and m.group(3) is not None:
            hidden[m.group(1)] = max(hidden.get(m.group(1), 0), int(m.group(3)) + 1)
    out = {}
    for key, value in state.items():
        if key == _HF_SHARED_PE:
            continue
        m = _HF_MLP.match(key)
        if m:
            part = m.group(2)
            last = hidden.get(m.group(1), 0) + 1
            idx = 0 if part == "proj_in" else last if part == "proj_out" else int(m.group(3)) + 1
            key = f"{m.group(1)}.layers.{idx}.{key[m.end():]}"
        for pattern, repl in _HF_TO_OFFICIAL:
            key = re.sub(pattern, repl, key)
        out[key] = value
    pe = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    if pe not in out and _HF_SHARED_PE in state:
        out[pe] = state[_HF_SHARED_PE]
    return out


def _flax_path(key: str, params: dict) -> tuple:
    """Official key -> path in the Flax params tree (resolving `weight` to kernel, scale or a plain param)."""
    module, leaf = key.rsplit(".", 1)
    if leaf not in ("weight", "bias"):
        module, leaf = key, None
    for pattern, repl in _OFFICIAL_TO_FLAX:
        module = re.sub(pattern, repl, module)
    path = tuple(re.sub(r"\.(\d+)(?=\.|$)", r"_\1", module).split("."))
    node = params
    for p in path:
        node = node.get(p, {}) if isinstance(node, dict) else {}
    if leaf == "bias":
        return path + ("bias",)
    if leaf == "weight" and isinstance(node, dict):
        return path + (("kernel",) if "kernel" in node else ("scale",))
    return path


def _convert(path: tuple, value: np.ndarray) -> np.ndarray:
    """A torch tensor (as NumPy) -> the Flax layout of the parameter at `path`."""
    if path[-1] != "kernel":
        return value
    if value.ndim == 2:
        return value.T
    if path[-2].startswith("upscale_conv"):          # ConvTranspose2d (I, O, kh, kw)
        return value.transpose(2, 3, 0, 1)[::-1, ::-1]
    return value.transpose(2, 3, 1, 0)              # Conv2d (O, I, kh, kw)


def official_to_flax(state: dict, params_shape: dict, source: str = "checkpoint") -> dict:
    """Official-layout state dict (NumPy arrays) -> Flax params matching `params_shape` (a pytree of shapes).

    Raises InputError naming `source` and the key for unknown keys, shape mismatches or missing parameters.
    """
    flat = {}
    for key, value in state.items():
        if key in _DROPPED:
            continue
        path = _flax_path(key, params_shape)
        node = params_shape
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if node is None or isinstance(node, dict):
            raise InputError(f"{source}: unexpected SAM parameter {key!r}")
        value = _convert(path, np.asarray(value, np.float32))
        if tuple(value.shape) != tuple(node.shape):
            raise InputError(f"{source}: {key} has shape {value.shape}, the model expects {tuple(node.shape)}")
        flat[path] = np.ascontiguousarray(value)
    expected = {tuple(k.key for k in kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params_shape)[0]}
    missing = sorted(expected - set(flat))
    if missing:
        raise InputError(f"{source}: missing SAM parameter {'/'.join(missing[0])} ({len(missing)} missing)")
    params = {}
    for path, value in flat.items():
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return params


def _count(state: dict, pattern: str) -> int:
    """Number of distinct indices i in keys matching `pattern` (a regex with one group for i)."""
    return len({m.group(1) for k in state for m in [re.match(pattern, k)] if m})


def config_from_state(state: dict, decoder_heads: int = 8, decoder_ln_eps: float = 1e-5) -> dict:
    """`Sam` fields read from an official-layout state dict's shapes (decoder heads and eps are not in it)."""
    def shape(key):
        if key not in state:
            raise InputError(f"SAM checkpoint has no {key!r}; {NEEDED}")
        return tuple(state[key].shape)

    dim, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    rel = [shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] for i in range(depth)]
    windows = [(n + 1) // 2 for n in rel if n != 2 * grid - 1]
    return dict(image_size=grid * patch, patch_size=patch, encoder_dim=dim, encoder_depth=depth,
                encoder_heads=dim // shape("image_encoder.blocks.0.attn.rel_pos_h")[1],
                mlp_ratio=shape("image_encoder.blocks.0.mlp.lin1.weight")[0] / dim,
                window_size=windows[0] if windows else 14,
                global_attn_indexes=tuple(i for i, n in enumerate(rel) if n == 2 * grid - 1),
                prompt_dim=shape("image_encoder.neck.0.weight")[0],
                mask_in_chans=shape("prompt_encoder.mask_downscaling.3.weight")[0],
                decoder_depth=_count(state, r"mask_decoder\.transformer\.layers\.(\d+)\."),
                decoder_heads=decoder_heads,
                decoder_mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
                num_multimask_outputs=shape("mask_decoder.mask_tokens.weight")[0] - 1,
                iou_head_depth=_count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
                iou_head_hidden_dim=shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
                decoder_ln_eps=decoder_ln_eps)


def _torch_load(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: reading a PyTorch checkpoint needs torch installed "
                         "(or give a .safetensors file)") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unpickling failure is a corrupt/unsupported file
        raise InputError(f"{path}: not a readable PyTorch state dict ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def _safetensors_load(path: str) -> dict:
    """{name: NumPy array} of a .safetensors file through safetensors' NumPy reader (torch is not imported)."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise InputError(f"{path}: reading a .safetensors file needs the safetensors package "
                         "(pip install -r requirements.txt, or pip install 'safetensors>=0.4.3,<1')") from None
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 -- header/format errors of a corrupt file
        raise InputError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None


def read_checkpoint(path: str) -> tuple[dict, dict]:
    """(official-layout state dict of NumPy arrays, Hugging Face config.json dict or {}) from `path`.

    `path`: an official .pth, a Hugging Face folder, or a .safetensors / .bin file in either layout.
    """
    path = os.fspath(path)
    hf_config = {}
    if os.path.isdir(path):
        cfg_file = os.path.join(path, "config.json")
        if os.path.isfile(cfg_file):
            with open(cfg_file) as f:
                hf_config = json.load(f)
        files = [os.path.join(path, n) for n in ("model.safetensors", "pytorch_model.bin")]
        found = [f for f in files if os.path.isfile(f)]
        if not found:
            raise InputError(f"{path}: folder has no model.safetensors or pytorch_model.bin; need {NEEDED}")
        path = found[0]
    elif not os.path.isfile(path):
        raise InputError(f"{path}: SAM checkpoint not found; need {NEEDED}")
    state = _safetensors_load(path) if path.endswith(".safetensors") else _torch_load(path)
    if any(k.startswith("vision_encoder.") for k in state):
        state = hf_to_official(state)
    if not any(k.startswith("image_encoder.") for k in state):
        raise InputError(f"{path}: no SAM image encoder weights (image_encoder.* or vision_encoder.*); need {NEEDED}")
    return state, hf_config


def from_state(state: dict, hf_config: dict | None = None, source: str = "checkpoint", **overrides):
    """(Sam module, {"params": ...}) from an official-layout state dict; `overrides` replace inferred fields.

    The decoder's heads and LayerNorm eps come from a Hugging Face config dict when given, else the official
    values (8 heads, eps 1e-5).
    """
    from jaxdiff.models.sam.model import Sam
    import jax.numpy as jnp
    dec = (hf_config or {}).get("mask_decoder_config", {})
    cfg = config_from_state(state, int(dec.get("num_attention_heads", 8)), float(dec.get("layer_norm_eps", 1e-5)))
    cfg.update(overrides)
    model = Sam(**cfg)
    g = model.image_size // model.patch_size
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, model.image_size, model.image_size, 3)),
                            jnp.zeros((1, 1, 2)), jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 4)),
                            jnp.zeros((1, 4 * g, 4 * g, 1)))["params"]
    params = official_to_flax(state, shapes, source=source)
    return model, {"params": jax.tree.map(jnp.asarray, params)}


def load_checkpoint(path: str, **overrides):
    """(Sam module, {"params": ...}) from a checkpoint file or folder (see `read_checkpoint`, `from_state`)."""
    state, hf_config = read_checkpoint(path)
    return from_state(state, hf_config, source=os.fspath(path), **overrides)
