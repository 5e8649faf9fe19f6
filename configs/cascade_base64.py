"""Cascaded super-resolution DDPM with a Swin bottleneck, stage 1: the base 64x64 generator (AttentionUNet with
SAGAN, attention gates and a Swin bottleneck at 8x8), unconditional DDPM on built-in phantom T1 slices (MRNet: see
the README).

Run:   python -m jaxdiff.train --config configs/cascade_base64.py --workdir runs/cascade_base64
       (without Swin: --config.model.swin=False; the original's Swin bugs: --config.model.faithful_swin=True;
       MRNet: --config.data.source=mrnet --config.data.root=/path/to/MRNet-v1.0)
Size:  python -m jaxdiff.summary --config configs/cascade_base64.py  -> params: 11117471 (7964695 without Swin)
Cost:  sized for a GPU (the original: A100); SAGAN at 64x64 holds a 4096 x 4096 attention map per image and channel
       block. On 2 CPU cores use configs/cascade_base64_tiny.py.
"""
import ml_collections

from jaxdiff import config_defaults


def get_config():
    c = config_defaults.get_config("data", "diffusion", "train", "mesh", "sample")
    c.task = "generation"
    c.model = ml_collections.ConfigDict(dict(
        name="attention_unet", out_channels=1, channels=(64, 128, 256), bottleneck_channels=512, emb_dim=128,
        sagan=True, gates=True, swin=True, swin_depth=1, swin_heads=8, swin_window=4, swin_mlp_ratio=4.0,
        faithful_swin=False, low_res=False, aug_level=False))
    c.diffusion.update(dict(schedule="linear", num_timesteps=2000, beta_start=0.00085, beta_end=0.012))
    c.data.update(dict(source="phantom", image_size=64, channels=1, modality="t1", num_cases=64, slices_per_case=8,
                       seed=0))
    c.train.update(dict(steps=50000, batch_size=16, lr=1e-4, lr_schedule="constant", weight_decay=1e-2,
                        grad_clip=1.0, ema=0.999, log_every=100, ckpt_every=2000, keep_checkpoints=2))
    return c
