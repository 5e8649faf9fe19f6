"""VGG16 (torchvision layout, 138,357,544 parameters with the 1000-class head), 224x224 RGB yes/no.

Transfer learning as in configs/classifier_resnet50.py (weights file e.g. vgg16-397923af.pth):
  python -m jaxdiff.train --config configs/classifier_vgg16.py --workdir runs/vgg16 \
    --config.data.root=/path/to/brain_tumor_dataset --config.model.num_classes=2 \
    --config.train.init_from=/path/to/vgg16-397923af.pth --config.train.trainable="('head',)"
Check: python -m jaxdiff.summary --config configs/classifier_vgg16.py   (params: 138357544)
Cost:  a GPU/TPU config (the 25088x4096 fc1 dominates the parameters).
"""
import ml_collections

from configs import classifier_resnet50


def get_config():
    c = classifier_resnet50.get_config()
    c.model = ml_collections.ConfigDict(dict(name="vgg16", hidden=4096, pool_size=7, dropout=0.5,
                                             num_classes=1000))
    return c
