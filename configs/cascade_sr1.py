"""Cascaded super-resolution DDPM, stage 2 (SR1): 64x64 -> 128x128 super-resolution DDPM, conditioned on the bilinear x2
upsample of the low-res image; UNet without SAGAN and gates, Swin bottleneck at 16x16. T = 1000.
Noise-conditioning augmentation is off as in the original; turn it on with
--config.diffusion.low_res_noise=0.2 --config.model.aug_level=True. The original's parametrisation is kept here
(eps-prediction of the high-res image); the tiny configs diffuse the residual to the bilinear upsample with
x0-prediction instead (--config.diffusion.residual=True --config.diffusion.prediction=x0; see
configs/cascade_sr1_tiny.py for why).

Run:   python -m jaxdiff.train --config configs/cascade_sr1.py --workdir runs/cascade_sr1
       (without Swin: --config.model.swin=False)
Size:  python -m jaxdiff.summary --config configs/cascade_sr1.py  -> params: 10923273 (7770497 without Swin)
SR vs interpolation (PSNR, SSIM, DSSIM, perceptual distance, sharpness against nearest / bilinear / bicubic /
Lanczos on held-out val images; sr_comparison.md / .csv / .png): the run ends with it in WORKDIR/samples/, or
       python -m jaxdiff.sample --workdir runs/cascade_sr1 --num 16 --steps 25 --out runs/cascade_sr1/sr_eval
Cost:  sized for a GPU; on 2 CPU cores use configs/cascade_sr1_tiny.py.
"""
from configs import cascade_base64


def get_config(image_size: int = 128, low_res_size: int = 64, num_timesteps: int = 1000):
    c = cascade_base64.get_config()
    c.task = "super_resolution"
    c.model.update(dict(sagan=False, gates=False, low_res=True))
    c.diffusion.update(dict(num_timesteps=num_timesteps, low_res_noise=0.0, low_res_noise_sample=0.0,
                             residual=False))
    c.data.update(dict(image_size=image_size, low_res_size=low_res_size))
    return c
