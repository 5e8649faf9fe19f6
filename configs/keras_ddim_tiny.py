"""`configs/keras_ddim.py` shrunk for 2 CPU cores: the same network at widths 8/16/32, block depth 1, on 32x32
phantom T1 slices; 800 steps at batch 16, then 16 EMA samples (DDIM, 10 steps) and a pixel MMD to held-out slices.

Run:   python -m jaxdiff.train --config configs/keras_ddim_tiny.py --workdir runs/keras_ddim_tiny
Cost:  2 min 24 s wall (71 s CPU) on a shared 2-core AMD EPYC CPU (load average ~10): first step (compile)
       20 s, then ~10 steps/s; MAE noise loss 0.65 at step 25, ~0.12 at 800; pixel MMD 0.32 to held-out
       slices; the samples are brain-shaped blobs without detail (the full config trains 10,000 steps).
"""
from configs import keras_ddim


def get_config():
    c = keras_ddim.get_config()
    c.model.update(dict(widths=(8, 16, 32), block_depth=1))
    c.diffusion.sample_steps = 10
    c.data.update(dict(image_size=32, num_cases=16))
    c.train.update(dict(steps=800, batch_size=16, ema=0.99, log_every=50, ckpt_every=400))
    c.sample.update(dict(kid_num=32))
    return c
