"""Seed S0: UNet + SE blocks + 2-layer transformer bottleneck (49,455,873 parameters) with the VAE error head.

The seed's pipeline: T2 only, 10 axial slices per case at linspace(70, 100, 10), divided by the volume max,
CLAHE (clip 2.0, 8x8 tiles), mask = seg > 0, case split 250/118 then 73/45 (random_state 42), flips / rot90 /
brightness-contrast / elastic augmentation on the training split only; Adam 1e-4, batch 16, 39 epochs.
By default it runs on the built-in phantom at 240x240; point it at BraTS2020 with
  --config.data.source=brats --config.data.root=/path/to/MICCAI_BraTS2020_TrainingData

Run:   python -m jaxdiff.train --config configs/transformer_unet_brats.py --workdir runs/s0
Check: python -m jaxdiff.summary --config configs/transformer_unet_brats.py --flops   (params: 49455873)
Cost:  a GPU/TPU config; on 2 CPU cores one step at batch 2 is measured in the README.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 42
    c.task = "segmentation"
    c.model = ml_collections.ConfigDict(dict(
        name="transformer_unet", widths=(64, 128, 256, 512, 1024), num_layers=2, num_heads=8, ff_dim=2048,
        dropout=0.1, channel_dropout=0.1, se_reduction=16, faithful_pe=False, out_channels=1))
    c.error_head = ml_collections.ConfigDict(dict(name="vae_error_head"))
    c.loss = ml_collections.ConfigDict(dict(error_weight=0.5, kl_weight=0.0, dice_weight=0.0))
    c.data = ml_collections.ConfigDict(dict(
        source="phantom", root="", image_size=240, channels=1, modality="t2", num_cases=368, slices_per_case=10,
        seed=42, split="seed_s0", slices="seed_s0", normalise="volume_max", clahe=True, augment=True,
        faithful_augment_test=False, num_workers=0))
    c.train = ml_collections.ConfigDict(dict(
        steps=39 * 157, batch_size=16, lr=1e-4, warmup_steps=0, lr_schedule="constant", optimizer="adam",
        grad_clip=0.0, ema=0.0, accum_steps=1, precision="fp32", log_every=50, ckpt_every=1000,
        keep_checkpoints=3, max_bad_steps=20))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.eval = ml_collections.ConfigDict(dict(num_examples=None, batch_size=8))
    return c
