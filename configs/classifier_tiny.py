"""Tiny CPU classifier: the custom CNN at narrow widths (16, 32, 64) on built-in phantom T2 slices, 48x48,
labelled "tumour in this slice" (label = the slice's tumour mask is non-empty; about 45% positive), balanced
class weights (data.balance="weights", computed from the slice labels). Ends with accuracy, precision,
recall, F1, ROC-AUC and samples/confusion_matrix.png.

Run:   python -m jaxdiff.train --config configs/classifier_tiny.py --workdir runs/cls_tiny
       python -m jaxdiff.evaluate --workdir runs/cls_tiny
Cost:  see README (classifier section, 2 CPU cores).
"""
from configs import classifier_cnn


def get_config():
    c = classifier_cnn.get_config()
    c.model.update(dict(widths=(16, 32, 64), dropout=0.1))
    c.data.update(dict(source="phantom", image_size=48, channels=1, modality="t2", num_cases=96,
                       slices_per_case=8))
    c.train.update(dict(steps=800, batch_size=16, lr=3e-3, warmup_steps=20, lr_schedule="cosine",
                        log_every=25, ckpt_every=400))
    c.eval.update(dict(num_examples=None, batch_size=80))
    return c
