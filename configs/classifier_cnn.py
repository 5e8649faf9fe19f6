"""The brain-tumour toolkit's custom CNN baseline (the toolkit names it without layers; see
jaxdiff/models/classifiers/cnn.py): 4 blocks of conv3x3-BN-ReLU-maxpool (32, 64, 128, 256), global average pool,
dropout 0.5, 2-class head; 389,410 parameters. Trained from scratch on the yes/no folders at 240x240 RGB with
balanced class weights.

Run:   python -m jaxdiff.train --config configs/classifier_cnn.py --workdir runs/cnn \
         --config.data.root=/path/to/brain_tumor_dataset
       python -m jaxdiff.evaluate --workdir runs/cnn
Check: python -m jaxdiff.summary --config configs/classifier_cnn.py   (params: 389410)
Cost:  see README (classifier section, 2 CPU cores).
"""
import ml_collections

from configs import classifier_resnet50


def get_config():
    c = classifier_resnet50.get_config()
    c.model = ml_collections.ConfigDict(dict(name="simple_cnn", widths=(32, 64, 128, 256), dropout=0.5,
                                             num_classes=2))
    c.data.update(dict(image_size=240, input_norm="none"))
    c.train.update(dict(steps=1000, batch_size=16, lr=1e-3))
    return c
