"""`configs/medsegdiff_tiny.py` diffusing the three nested BraTS regions instead of the whole-tumour mask.

Region-based training as nnU-Net does it for BraTS: the mask has one channel per region, WT = {1, 2, 4},
TC = {1, 4}, ET = {4} (`data.regions="brats"`); MedSegDiff diffuses that 3-channel mask in [-1, 1]
(`model.mask_channels=3`), and the ensemble is fused per channel. Input: T1ce, FLAIR and T2 (enhancing tumour is
bright on T1ce, oedema on FLAIR and T2). Everything else is the tiny config's (phantom cases, 32x32, 500 steps,
DDIM 10 steps, ensemble of 5). Predicted regions are turned into BraTS labels 2 / 1 / 4 by
`jaxdiff.inference.labels_from_probabilities`.

Run:   python -m jaxdiff.train --config configs/medsegdiff_tiny_regions.py --workdir runs/msd_tiny_regions
Check: python -m jaxdiff.summary --config configs/medsegdiff_tiny_regions.py      (params: 408179)
"""
from configs import medsegdiff_tiny


def get_config():
    c = medsegdiff_tiny.get_config()
    c.data.update(dict(regions="brats", modality="t1ce,flair,t2"))
    c.model.mask_channels = 3
    return c
