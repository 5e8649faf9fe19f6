"""Segment Anything ViT-B/16 (sam_vit_b_01ec64, facebook/sam-vit-base): 93,735,728 parameters.

Inference with your checkpoint (nothing is downloaded):
       python -m jaxdiff.sam --checkpoint sam_vit_b_01ec64.pth --image I.png --points 120,88 --out sam_out
       python -m jaxdiff.sam --checkpoint sam_vit_b_01ec64.pth --input-dir yes/ --output-dir pseudo/
Check: python -m jaxdiff.summary --config configs/sam_vit_b.py        (params: 93735728)
Train: box-prompted fine-tuning on a mask folder (e.g. the pseudo-masks above), a GPU/TPU job:
       python -m jaxdiff.train --config configs/sam_vit_b.py --config.data.root=pseudo/
Cost:  the jitted 1024x1024 image encoder on 2 CPU cores is measured in the README.
"""
import ml_collections

from jaxdiff import config_defaults


def get_config():
    c = config_defaults.get_config("data", "train", "mesh", "eval")
    c.task = "promptable_segmentation"
    c.model = ml_collections.ConfigDict(dict(
        name="sam", image_size=1024, patch_size=16, encoder_dim=768, encoder_depth=12, encoder_heads=12,
        mlp_ratio=4.0, window_size=14, global_attn_indexes=(2, 5, 8, 11), prompt_dim=256, mask_in_chans=16,
        decoder_depth=2, decoder_heads=8, decoder_mlp_dim=2048, num_multimask_outputs=3, iou_head_depth=3,
        iou_head_hidden_dim=256, decoder_ln_eps=1e-5))
    c.data.update(dict(source="mask_folder", image_size=1024, channels=3, seed=0))
    c.train.update(dict(steps=2000, batch_size=2, lr=1e-5, warmup_steps=100, grad_clip=1.0, log_every=20,
                        ckpt_every=500, keep_checkpoints=2))
    c.eval.update(dict(num_examples=32, batch_size=2))
    return c
