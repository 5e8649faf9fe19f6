"""Seed S3 cascade, stage 1: the base 64x64 generator (AttentionUNet with SAGAN, attention gates and a Swin
bottleneck at 8x8), unconditional DDPM on built-in phantom T1 slices (MRNet: see the README).

Run:   python -m jaxdiff.train --config configs/cascade_base64.py --workdir runs/cascade_base64
       (without Swin: --config.model.swin=False; the original's Swin bugs: --config.model.faithful_swin=True;
       MRNet: --config.data.source=mrnet --config.data.root=/path/to/MRNet-v1.0)
Size:  python -m jaxdiff.summary --config configs/cascade_base64.py  -> params: 11117471 (7964695 without Swin)
Cost:  sized for a GPU (seed: A100); SAGAN at 64x64 holds a 4096 x 4096 attention map per image and channel
       block. On 2 CPU cores use configs/cascade_base64_tiny.py.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "generation"
    c.model = ml_collections.ConfigDict(dict(
        name="attention_unet", out_channels=1, channels=(64, 128, 256), bottleneck_channels=512, emb_dim=128,
        sagan=True, gates=True, swin=True, swin_depth=1, swin_heads=8, swin_window=4, swin_mlp_ratio=4.0,
        faithful_swin=False, low_res=False, aug_level=False))
    c.diffusion = ml_collections.ConfigDict(dict(
        schedule="linear", num_timesteps=2000, beta_start=0.00085, beta_end=0.012, prediction="eps", loss="mse",
        min_snr_gamma=0.0, sampler="ddim", sample_steps=50, eta=0.0, clip_x0=1.0, guidance_scale=0.0))
    c.data = ml_collections.ConfigDict(dict(
        source="phantom", image_size=64, channels=1, modality="t1", root="", num_cases=64, slices_per_case=8,
        seed=0, num_workers=0))
    c.train = ml_collections.ConfigDict(dict(
        steps=50000, batch_size=16, lr=1e-4, warmup_steps=0, lr_schedule="constant", optimizer="adamw",
        weight_decay=1e-2, grad_clip=1.0, ema=0.999, accum_steps=1, precision="fp32", log_every=100,
        ckpt_every=2000, keep_checkpoints=2, max_bad_steps=20))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.sample = ml_collections.ConfigDict(dict(num=16))
    return c
