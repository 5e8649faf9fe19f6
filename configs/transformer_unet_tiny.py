"""The transformer-UNet BraTS segmenter at narrow widths on phantom T2 slices, 64x64: trains on 2 CPU cores in minutes.

Run:   python -m jaxdiff.train --config configs/transformer_unet_tiny.py --workdir runs/transformer_unet_tiny
       python -m jaxdiff.evaluate --workdir runs/transformer_unet_tiny
Cost:  see README (measured on 2 CPU cores).
"""
from configs import transformer_unet_brats


def get_config():
    c = transformer_unet_brats.get_config()
    c.model.update(dict(widths=(8, 16, 32, 64, 64), num_heads=4, ff_dim=128))
    c.data.update(dict(image_size=64, num_cases=48, slices_per_case=8, split="random", slices=None,
                       clahe=True, augment=True))
    c.train.update(dict(steps=400, batch_size=16, lr=1e-3, log_every=20, ckpt_every=200))
    c.loss.dice_weight = 1.0
    c.eval.num_cases = None               # every whole case of the split, scored in 3D
    # XLA:CPU only: at 8-16 channels YNNPACK's elementwise fusions are slower than XLA's own loop fusions (train
    # step 141-170 -> 105-117 ms on the 2-core CPU, `python -m benchmarks.run --cases s0_tiny --frameworks jax`
    # with XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=... ; the wide models gain from them).
    c.xla_cpu_fusion = "dot,reduce"
    return c
