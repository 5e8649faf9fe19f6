"""The main job: `configs/medsegdiff_phantom.py` shortened to a few minutes on 2 CPU cores. Trains MedSegDiff on
built-in phantom tumour slices (32x32, T1 / FLAIR / T1ce) and ends by scoring every held-out (val) phantom case
whole in 3D: per-case Dice and HD95 (mm) of the whole tumour (DDIM 10 steps, ensemble of 5), per_case.csv,
evaluation.json and an overlay figure in the work directory's samples/.

Run:   python -m jaxdiff.train --config configs/medsegdiff_tiny.py --workdir runs/msd_tiny
Cost:  see README (measured on 2 CPU cores).
"""
from configs import medsegdiff_phantom


def get_config():
    c = medsegdiff_phantom.get_config()
    c.data.update(dict(num_cases=64))
    c.train.update(dict(steps=500, warmup_steps=50, ema=0.98, log_every=25, ckpt_every=250))
    # The end-of-run report scores the 6 val cases whole in 3D (every axial slice, batched as jaxdiff.predict
    # does: 88 slices = 2 batches of 44); --config.eval.num_cases=N scores N of them (and says so).
    c.eval.update(dict(num_cases=None, batch_size=44))
    return c
