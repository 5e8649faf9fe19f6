"""`configs/unet512_seg.py` shrunk for 2 CPU cores: the same U-Net at widths 8/16/32/64, bridge 128, on 32x32
phantom T1ce tumour slices (128 cases x 4 slices), Adam 1e-3, 400 steps at batch 16, with a soft Dice term
added to the original's cross-entropy (small tumours at 32x32); ends with Dice / IoU / HD95 on held-out slices.

Run:   python -m jaxdiff.train --config configs/unet512_seg_tiny.py --workdir runs/unet512_tiny
Cost:  2 min 32 s wall (64 s CPU) on a shared, heavily loaded 2-core AMD EPYC CPU (load average ~15): first
       step (compile) 28 s, then ~7 steps/s; Dice 0.30, IoU 0.23, HD95 2.7 px on 32 held-out slices.
"""
from configs import unet512_seg


def get_config():
    c = unet512_seg.get_config()
    c.model.widths = (8, 16, 32, 64, 128)
    c.loss.dice_weight = 1.0
    c.data.update(dict(image_size=32, num_cases=128, slices_per_case=4))
    c.train.update(dict(steps=400, batch_size=16, lr=1e-3, log_every=20, ckpt_every=200))
    c.eval.update(dict(num_examples=32, batch_size=32))
    return c
