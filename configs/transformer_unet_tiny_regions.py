"""`configs/transformer_unet_tiny.py` trained on the three nested BraTS regions instead of the whole tumour.

Region-based training as nnU-Net does it for BraTS: the mask has one channel per region, WT = {1, 2, 4},
TC = {1, 4}, ET = {4} (`data.regions="brats"`), and the segmenter one sigmoid logit per region
(`model.out_channels=3`); the loss is BCE + soft Dice per region channel, averaged over the regions, plus the VAE
error head's reconstruction of the 3-channel error map. Input: T1ce, FLAIR and T2 (enhancing tumour is bright on
T1ce, oedema on FLAIR and T2). Everything else is the tiny config's (phantom cases, 64x64, 400 steps).
Predicted regions are turned into BraTS labels 2 / 1 / 4 by `jaxdiff.inference.labels_from_probabilities`.

Run:   python -m jaxdiff.train --config configs/transformer_unet_tiny_regions.py \
         --workdir runs/transformer_unet_tiny_regions
Check: python -m jaxdiff.summary --config configs/transformer_unet_tiny_regions.py      (params: 409907)
"""
from configs import transformer_unet_brats_regions, transformer_unet_tiny


def get_config():
    return transformer_unet_brats_regions.to_regions(transformer_unet_tiny.get_config())
