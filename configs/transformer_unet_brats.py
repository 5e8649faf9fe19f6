"""The transformer-UNet BraTS segmenter: UNet + SE blocks + 2-layer transformer bottleneck (49,455,873
parameters) with the VAE error head.

The original's pipeline: T2 only, 10 axial slices per case at linspace(70, 100, 10), divided by the volume max,
CLAHE (clip 2.0, 8x8 tiles), mask = seg > 0, case split 250/118 then 73/45 (random_state 42,
`data.split="brats_250_73_45"`), flips / rot90 / brightness-contrast / elastic augmentation on the training split
only; Adam 1e-4, batch 16, 39 epochs. By default it runs on the built-in phantom at 240x240; point it at BraTS2020
with --config.data.source=brats --config.data.root=/path/to/MICCAI_BraTS2020_TrainingData

Run:   python -m jaxdiff.train --config configs/transformer_unet_brats.py --workdir runs/transformer_unet
Check: python -m jaxdiff.summary --config configs/transformer_unet_brats.py --flops   (params: 49455873)
Cost:  a GPU/TPU config; on 2 CPU cores one step at batch 2 is measured in the README.
"""
import ml_collections

from jaxdiff import config_defaults


def get_config():
    c = config_defaults.get_config("data", "train", "mesh", "eval", "loss")
    c.seed = 42
    c.task = "segmentation"
    c.model = ml_collections.ConfigDict(dict(
        name="transformer_unet", widths=(64, 128, 256, 512, 1024), num_layers=2, num_heads=8, ff_dim=2048,
        dropout=0.1, channel_dropout=0.1, se_reduction=16, faithful_pe=False, out_channels=1))
    c.error_head = ml_collections.ConfigDict(dict(name="vae_error_head"))
    c.data.update(dict(source="phantom", image_size=240, channels=1, modality="t2", num_cases=368, slices_per_case=10,
                       seed=42, split="brats_250_73_45", slices="linspace_70_100_10", clahe=True, augment=True))
    c.train.update(dict(steps=39 * 157, batch_size=16, lr=1e-4, lr_schedule="constant", optimizer="adam"))
    c.eval.batch_size = 8
    # XLA:CPU only: YNNPACK for the matmuls alone. Its elementwise and reduction fusions double this model's step
    # temporaries at 240x240 (benchmarks/PERFORMANCE.md, 2026-12-08); GPU and TPU ignore the key.
    c.xla_cpu_fusion = "dot"
    return c
