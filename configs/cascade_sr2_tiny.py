"""configs/cascade_sr2.py shrunk for 2 CPU cores: 32x32 -> 64x64 stage of the tiny cascade (as
configs/cascade_sr1_tiny.py, Swin at 16x16).

Run:   python -m jaxdiff.train --config configs/cascade_sr2_tiny.py --workdir runs/cascade_tiny_sr2
       whole tiny cascade: python -m jaxdiff.sample --cascade runs/cascade_tiny_base,runs/cascade_tiny_sr1,
                           runs/cascade_tiny_sr2 --num 4 --steps 20,10,10 --out runs/cascade_tiny_samples
Cost:  1000 steps: 162 s wall on 2 shared CPU cores (load ~10; ~8 steps/s); the tiny cascade sample
       (--num 8) 19 s.
"""
from configs import cascade_sr1_tiny


def get_config():
    return cascade_sr1_tiny.get_config(image_size=64, low_res_size=32)
