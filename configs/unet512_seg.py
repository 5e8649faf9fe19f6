"""The brain-tumour toolkit's segmenter: a 512x512 U-Net (Conv-BN-ReLU x2 blocks 64/128/256/512, bridge 1024, max
pooling, transposed-conv decoder with skips, 2-class softmax; 31,042,434 parameters at one input channel, 31,043,586
at RGB) trained with Adam 1e-4 on softmax cross-entropy.

The toolkit trained it on SAM (sam-vit-base, point prompts) pseudo-masks of the Kaggle yes/ folder. By default
this runs on built-in phantom T1ce slices through tumours (whole-tumour masks), resampled to 512x512. For the
toolkit's data, write pseudo-masks with
  python -m jaxdiff.sam --checkpoint SAM_WEIGHTS --input-dir yes/ --output-dir O
(layout O/images/NAME.jpg + O/masks/NAME.png) and train on them with
  --config.data.source=mask_folder --config.data.root=O   (grey; add --config.data.channels=3 for RGB input)

Run:   python -m jaxdiff.train --config configs/unet512_seg.py --workdir runs/unet512
       python -m jaxdiff.evaluate --workdir runs/unet512
Check: python -m jaxdiff.summary --config configs/unet512_seg.py   (params: 31042434)
Cost:  a GPU/TPU config; see configs/unet512_seg_tiny.py for a CPU run.
"""
import ml_collections

from jaxdiff import config_defaults


def get_config():
    c = config_defaults.get_config("data", "train", "mesh", "eval", "loss")
    c.task = "segmentation"
    c.model = ml_collections.ConfigDict(dict(name="unet512", widths=(64, 128, 256, 512, 1024), num_classes=2))
    c.data.update(dict(source="phantom", image_size=512, channels=1, modality="t1ce", num_cases=64, slices_per_case=4,
                       tumour_only=True, seed=0))
    c.train.update(dict(steps=2000, batch_size=8, lr=1e-4, lr_schedule="constant", optimizer="adam",
                        ckpt_every=500, keep_checkpoints=2))
    c.eval.batch_size = 4
    return c
