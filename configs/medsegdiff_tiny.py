"""The main job: MedSegDiff (seed S1 architecture, paper FF-Parser and fusion) on built-in phantom tumour slices,
32x32, T1+T2 channels. Trains on 2 CPU cores in a few minutes and ends by printing Dice, IoU and HD95 on
held-out phantom cases (DDIM, ensemble of 5) and writing an overlay figure.

Run:   python -m jaxdiff.train --config configs/medsegdiff_tiny.py --workdir runs/msd_tiny
Cost:  see README (measured on 2 CPU cores).
"""
from configs import medsegdiff_seed


def get_config():
    c = medsegdiff_seed.get_config()
    c.model.update(dict(image_channels=2, faithful_ffparser=False, faithful_fusion=False))
    c.diffusion.update(dict(sampler="ddim", sample_steps=10, eta=0.0, ensemble=5))
    c.data.update(dict(channels=2, modality="t1,t2", num_cases=64, slices_per_case=8, tumour_only=False))
    c.train.update(dict(steps=1500, lr=1e-3, warmup_steps=50, lr_schedule="cosine", final_lr_fraction=0.05,
                        optimizer="adamw", grad_clip=1.0, ema=0.99, log_every=50, ckpt_every=500))
    c.eval.update(dict(num_examples=64, batch_size=32))
    return c
