"""What is benchmarked: the model pairs (`CASES`, each a jaxdiff config whose `model` block also builds the
PyTorch twin), the run lengths (`Sizes`) and the external baselines (MONAI's and diffusers' 2D UNets configured
like jaxdiff's)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections

from configs import medsegdiff_lgg, medsegdiff_tiny, quickstart, transformer_unet_brats, transformer_unet_tiny


TWIN_FRAMEWORKS = ("jax", "torch", "torch.compile")  # jaxdiff's model and its PyTorch twin with ported weights
BASELINES = {"monai": "MONAI DiffusionModelUNet", "diffusers": "diffusers UNet2DModel"}  # own weights, eager
FRAMEWORKS = TWIN_FRAMEWORKS + tuple(BASELINES)
NOT_INSTALLED = "not installed: pip install -r requirements-bench.txt"
QUICK_SIZE, QUICK_BATCH = 16, 2  # image side and train batch of --quick
# --quick only: XLA:CPU's LLVM optimisation costs most of the compile time (the tiny models still compile ~1700


# --- what is benchmarked --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    """One model pair. `config(quick) -> jaxdiff config`; the PyTorch twin is built from its `model` block.
    `baselines`: also run MONAI's and diffusers' UNets configured like the `model` block (a 2D diffusion UNet)."""

    name: str
    label: str
    config: Callable[[bool], ml_collections.ConfigDict]
    full_only: bool = False
    baselines: bool = False

    def is_diffusion(self, quick: bool) -> bool:
        return self.config(quick).task != "segmentation"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Run lengths: train steps per timed repeat, warm-up steps after the first, DDIM chain and batch."""

    repeats: int
    train_steps: int
    warmup: int
    ddim_steps: int
    sample_batch: int

    @classmethod
    def of(cls, quick: bool, repeats: int | None) -> "Sizes":
        if quick:
            return cls(repeats or 2, train_steps=2, warmup=1, ddim_steps=5, sample_batch=2)
        return cls(repeats or 5, train_steps=3, warmup=1, ddim_steps=50, sample_batch=4)


def _shrink(c, **model):
    """--quick: QUICK_SIZE images, batch QUICK_BATCH, narrower model (`model` overrides)."""
    c.data.image_size, c.train.batch_size = QUICK_SIZE, QUICK_BATCH
    c.model.update(model)
    return c


def _unet(quick):
    c = quickstart.get_config()
    return _shrink(c, base_channels=8, channel_mults=(1, 2), attention_levels=(1,), groups=4) if quick else c


def _medsegdiff(base):
    def make(quick):
        c = base.get_config()
        return _shrink(c, image_size=QUICK_SIZE, first_conv_channels=8) if quick else c
    return make


def _transformer_unet(base, batch=None):
    def make(quick):
        c = base.get_config()
        c.train.batch_size = batch or c.train.batch_size
        return _shrink(c, widths=(4, 8, 8, 16, 16), ff_dim=32) if quick else c
    return make


CASES = (
    Case("unet2d", "diffusion UNet 2D (configs/quickstart.py, 64x64)", _unet, baselines=True),
    Case("medsegdiff_lgg", "MedSegDiff as the LGG notebook builds it (configs/medsegdiff_lgg.py, 32x32)",
         _medsegdiff(medsegdiff_lgg)),
    Case("medsegdiff_tiny", "MedSegDiff main job (configs/medsegdiff_tiny.py, 32x32)", _medsegdiff(medsegdiff_tiny)),
    Case("transformer_unet_tiny", "TransUNet-style BraTS segmenter, narrow (configs/transformer_unet_tiny.py, 64x64)",
         _transformer_unet(transformer_unet_tiny)),
    Case("transformer_unet_full",
         "TransUNet-style BraTS segmenter, full size (configs/transformer_unet_brats.py, 240x240)",
         _transformer_unet(transformer_unet_brats, batch=2), full_only=True),
)
CASE_BY_NAME = {c.name: c for c in CASES}
# the cases' earlier names, still accepted by --cases (with a note)
CASE_ALIASES = {"medsegdiff_seed": "medsegdiff_lgg", "s0_tiny": "transformer_unet_tiny",
                "s0_full": "transformer_unet_full"}


# --- external baselines (cases with `baselines`): MONAI and diffusers UNets configured like jaxdiff's -------------

def baseline_kwargs(name: str, model, channels: int = 1) -> dict:
    """Constructor arguments of baseline `name` ("monai": `monai.networks.nets.DiffusionModelUNet`, "diffusers":
    `diffusers.UNet2DModel`) matching jaxdiff's 2D UNet `model` block, for `channels` input and output channels.

    Matched: level widths base_channels * channel_mults, num_res_blocks ResBlocks per encoder level (one more per
    decoder level), attention after each ResBlock of the `attention_levels` and in the middle block (ResBlock,
    attention, ResBlock), heads of C // num_heads (or head_channels) channels, GroupNorm(groups) with eps 1e-5, a
    sinusoid of base_channels entries into a 4 * base_channels time MLP, strided-conv downsampling and nearest + conv
    upsampling, SDPA attention (MONAI's switched to it, with a fused qkv projection as jaxdiff's). Not matched: MONAI
    adds the time embedding in the ResBlock (its only option; jaxdiff and diffusers here use scale-shift FiLM) and
    has no ResBlock dropout; diffusers takes one head width for every level (the deepest level's) and computes q, k,
    v with three linears.
    """
    widths = tuple(int(model.base_channels) * int(m) for m in model.channel_mults)
    attention = tuple(level in tuple(model.attention_levels) for level in range(len(widths)))
    heads = tuple(int(model.get("head_channels", 0)) or w // int(model.num_heads) for w in widths)
    common = dict(in_channels=channels, out_channels=int(model.get("out_channels") or channels), norm_eps=1e-5)
    if name == "monai":
        return dict(common, spatial_dims=2, channels=widths, attention_levels=attention,
                    num_res_blocks=int(model.num_res_blocks), num_head_channels=heads,
                    norm_num_groups=int(model.groups), use_combined_linear=True, use_flash_attention=True)
    return dict(common, block_out_channels=widths, layers_per_block=int(model.num_res_blocks),
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
                attention_head_dim=heads[-1], norm_num_groups=int(model.groups),
                attn_norm_num_groups=int(model.groups), resnet_time_scale_shift="scale_shift",
                flip_sin_to_cos=False, freq_shift=0, dropout=float(model.get("dropout", 0.0)))


def baseline_net(name: str, model, channels: int = 1):
    """(the baseline torch module with its own random init, adapter `net(x, t, cond) -> eps`): x (B, C, H, W)
    float32, t (B,) int64, cond None (the baselines run unconditional generation only)."""
    if name == "monai":
        from monai.networks.nets import DiffusionModelUNet as cls
    else:
        from diffusers import UNet2DModel as cls
    module = cls(**baseline_kwargs(name, model, channels))

    def net(x, t, cond=None):
        if cond:
            raise ValueError(f"the {name} baseline is unconditional, got cond keys {sorted(cond)}")
        return module(x, t) if name == "monai" else module(x, t, return_dict=False)[0]
    return module, net
