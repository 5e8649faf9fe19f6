"""configs/cascade_sr2.py shrunk for 2 CPU cores: 128x128 -> 256x256 stage of the tiny cascade (as
configs/cascade_sr1_tiny.py, Swin at 64x64).

Run:   python -m jaxdiff.train --config configs/cascade_sr2_tiny.py --workdir runs/cascade_tiny_sr2
       whole tiny cascade: python -m jaxdiff.sample --cascade runs/cascade_tiny_base,runs/cascade_tiny_sr1,
                           runs/cascade_tiny_sr2 --num 4 --steps 20,10,10 --out runs/cascade_tiny_samples
Cost:  200 steps: 248 s wall on the 2-core AMD EPYC CPU, otherwise idle (first step 9 s, ~1 step/s); the
       cascade sample above (64, 128 and 256 px PNGs of 4 images) 15 s.
"""
from configs import cascade_sr1_tiny


def get_config():
    return cascade_sr1_tiny.get_config(image_size=256, low_res_size=128)
