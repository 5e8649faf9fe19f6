"""The cascade's comparison model: a single-stage 256x256 DDPM with the same AttentionUNet (Swin bottleneck at
32x32, attention gates) and the base stage's schedule and optimiser. SAGAN is off: at 256x256 its attention
map (65536^2 per image) does not fit any accelerator.

Run:   python -m jaxdiff.train --config configs/ddpm256.py --workdir runs/ddpm256
Size:  python -m jaxdiff.summary --config configs/ddpm256.py
Cost:  sized for a GPU; compare its samples with the cascade's 256x256 outputs (jaxdiff.sample --cascade).
"""
from configs import cascade_base64


def get_config():
    c = cascade_base64.get_config()
    c.model.update(dict(sagan=False, gates=True))
    c.data.update(dict(image_size=256))
    return c
