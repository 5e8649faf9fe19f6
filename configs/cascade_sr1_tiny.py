"""configs/cascade_sr1.py shrunk for 2 CPU cores: 64x64 -> 128x128 stage of the tiny cascade (Swin at 32x32,
T = 1000, noise-conditioning augmentation on: up to 10% of T in training, 5% at sampling).

Run:   python -m jaxdiff.train --config configs/cascade_sr1_tiny.py --workdir runs/cascade_tiny_sr1
Cost:  200 steps: 78 s wall on the 2-core AMD EPYC CPU, otherwise idle (first step 7.5 s, ~4 steps/s), params
       44,419. After 200 steps the SR output is noise (PSNR 7.4 dB against bilinear's 36.9 dB, written to
       samples/sr_comparison.md): a pipeline check, not a result.
"""
from configs import cascade_base64_tiny, cascade_sr1


def get_config(image_size: int = 128, low_res_size: int = 64):
    c = cascade_sr1.get_config(image_size=image_size, low_res_size=low_res_size, num_timesteps=1000)
    c.model.update(dict(cascade_base64_tiny.TINY_MODEL, aug_level=True))
    c.diffusion.update(dict(sample_steps=10, low_res_noise=0.1, low_res_noise_sample=0.05))
    c.data.update(dict(num_cases=16, slices_per_case=4))
    c.train.update(cascade_base64_tiny.TINY_TRAIN)
    c.sample.num = 8
    return c
