"""configs/cascade_base64.py shrunk for 2 CPU cores: 64x64 base stage of the tiny 64 -> 128 -> 256 cascade
(channels (8, 16), bottleneck 32 with a 2-head, window-2 Swin block at 16x16), EMA 0.99, 200 steps. T = 1000: the
linear 0.00085..0.012 betas need T >= 1000 to reach noise (at T = 200, alpha_bar_T = 0.27).

Run:   python -m jaxdiff.train --config configs/cascade_base64_tiny.py --workdir runs/cascade_tiny_base
Cost:  200 steps: 329 s wall on the 2-core AMD EPYC CPU, otherwise idle (first step 23 s, then ~0.8 steps/s: the
       SAGAN attention at 64x64 dominates), params 43,985. The samples are still noise at 200 steps: this
       checks the cascade pipeline, not image quality.
"""
from configs import cascade_base64

TINY_MODEL = dict(channels=(8, 16), bottleneck_channels=32, emb_dim=16, swin_heads=2, swin_window=2)
TINY_TRAIN = dict(steps=200, batch_size=8, lr=1e-3, warmup_steps=20, ema=0.99, log_every=50,
                  ckpt_every=100)


def get_config():
    c = cascade_base64.get_config()
    c.model.update(TINY_MODEL)
    c.diffusion.update(dict(num_timesteps=1000, sample_steps=20))
    c.data.update(dict(image_size=64, num_cases=16, slices_per_case=4))
    c.train.update(TINY_TRAIN)
    c.sample.num = 8
    return c
