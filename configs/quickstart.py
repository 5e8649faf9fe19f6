"""Quickstart: a small unconditional 2D DDPM on built-in phantom T1 brain slices, 64x64.

Run:   python -m jaxdiff.train --config configs/quickstart.py --workdir runs/quickstart
Cost:  see README "Quickstart" for measured steps/s and compile time on 2 CPU cores.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "generation"
    c.model = ml_collections.ConfigDict(dict(
        name="unet", out_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
        attention_levels=(2,), num_heads=4, dropout=0.0, groups=8, num_classes=0))
    c.diffusion = ml_collections.ConfigDict(dict(
        schedule="cosine", num_timesteps=1000, prediction="eps", loss="mse", min_snr_gamma=0.0,
        sampler="ddim", sample_steps=50, eta=0.0, clip_x0=1.0, guidance_scale=0.0, cond_drop=0.1))
    c.data = ml_collections.ConfigDict(dict(
        source="phantom", image_size=64, channels=1, modality="t1", root="", num_cases=64, seed=0,
        num_workers=0))
    c.train = ml_collections.ConfigDict(dict(
        steps=400, batch_size=8, lr=5e-4, warmup_steps=50, lr_schedule="cosine", final_lr_fraction=0.1,
        optimizer="adamw", weight_decay=0.0, grad_clip=1.0, ema=0.99, accum_steps=1, precision="fp32",
        log_every=25, ckpt_every=200, keep_checkpoints=2, max_bad_steps=20))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.sample = ml_collections.ConfigDict(dict(num=16))
    return c
