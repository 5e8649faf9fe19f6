"""Cascaded super-resolution DDPM, stage 3 (SR2): 128x128 -> 256x256 super-resolution DDPM (as SR1, Swin
bottleneck at 32x32), T = 2000.

Run:   python -m jaxdiff.train --config configs/cascade_sr2.py --workdir runs/cascade_sr2
       whole cascade: python -m jaxdiff.sample --cascade runs/cascade_base64,runs/cascade_sr1,runs/cascade_sr2
                      --num 4 --steps 50,25,25 --out runs/cascade_samples
Size:  python -m jaxdiff.summary --config configs/cascade_sr2.py  -> params: 10923273 (7770497 without Swin)
Cost:  sized for a GPU; on 2 CPU cores use configs/cascade_sr2_tiny.py.
"""
from configs import cascade_sr1


def get_config():
    return cascade_sr1.get_config(image_size=256, low_res_size=128, num_timesteps=2000)
