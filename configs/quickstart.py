"""Quickstart: a small unconditional 2D DDPM on built-in phantom T1 brain slices, 64x64.

Run:   python -m jaxdiff.train --config configs/quickstart.py --workdir runs/quickstart
Cost:  see README "Quickstart" for measured steps/s and compile time on 2 CPU cores.
"""
import ml_collections

from jaxdiff import config_defaults


def get_config():
    c = config_defaults.get_config("data", "diffusion", "train", "mesh", "sample")
    c.task = "generation"
    c.model = ml_collections.ConfigDict(dict(
        name="unet", out_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
        attention_levels=(2,), num_heads=4, dropout=0.0, groups=8, num_classes=0))
    c.diffusion.update(dict(schedule="cosine", num_timesteps=1000))
    c.data.update(dict(source="phantom", image_size=64, channels=1, modality="t1", num_cases=64, seed=0))
    c.train.update(dict(steps=400, batch_size=8, lr=5e-4, warmup_steps=50, final_lr_fraction=0.1, grad_clip=1.0,
                        ema=0.99, log_every=25, ckpt_every=200, keep_checkpoints=2))
    return c
