"""The transformer-UNet BraTS segmenter (`configs/transformer_unet_brats.py`) trained on the three nested BraTS regions.

Region-based training as nnU-Net does it for BraTS: the mask has one channel per region, WT = {1, 2, 4},
TC = {1, 4}, ET = {4} (`data.regions="brats"`), and the segmenter one sigmoid logit per region; the loss is BCE
+ soft Dice (`loss.dice_weight=1`, nnU-Net's region loss) per region channel, averaged over the regions, plus the
VAE error head's reconstruction of the 3-channel error map. Input: T1ce, FLAIR and T2 (the original trains T2
alone, which cannot show the enhancing tumour). Otherwise the original's recipe (slices, split, CLAHE,
augmentation, Adam 1e-4, batch 16). Point it at BraTS2020 with
  --config.data.source=brats --config.data.root=/path/to/MICCAI_BraTS2020_TrainingData

Parameters: 49,457,283, the original's 49,455,873 plus 1,280 in enc1 (3 input channels: its first 3x3 conv and
1x1 residual conv) and 130 in the final 1x1 conv (3 logits).

Run:   python -m jaxdiff.train --config configs/transformer_unet_brats_regions.py \
         --workdir runs/transformer_unet_regions
Check: python -m jaxdiff.summary --config configs/transformer_unet_brats_regions.py      (params: 49457283)
"""
from configs import transformer_unet_brats


def to_regions(c):
    """A transformer-UNet segmenter config `c` made to train the three BraTS regions from T1ce, FLAIR and T2
    (3 inputs, 3 logits)."""
    c.data.update(dict(regions="brats", modality="t1ce,flair,t2", channels=3))
    c.model.update(dict(in_channels=3, out_channels=3))
    c.error_head.update(dict(in_channels=3, out_channels=3))
    return c


def get_config():
    c = to_regions(transformer_unet_brats.get_config())
    c.loss.dice_weight = 1.0
    return c
