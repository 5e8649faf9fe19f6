"""The main job: `configs/medsegdiff_phantom.py` shortened to a few minutes on 2 CPU cores. Trains MedSegDiff on
built-in phantom tumour slices (32x32, T1 / FLAIR / T1ce) and ends by printing Dice, IoU and HD95 on held-out
phantom cases (DDIM 10 steps, ensemble of 5) and writing an overlay figure to the work directory's samples/.

Run:   python -m jaxdiff.train --config configs/medsegdiff_tiny.py --workdir runs/msd_tiny
Cost:  see README (measured on 2 CPU cores).
"""
from configs import medsegdiff_phantom


def get_config():
    c = medsegdiff_phantom.get_config()
    c.data.update(dict(num_cases=64))
    c.train.update(dict(steps=500, warmup_steps=50, ema=0.98, log_every=25, ckpt_every=250))
    c.eval.update(dict(num_examples=48, batch_size=48))
    return c
