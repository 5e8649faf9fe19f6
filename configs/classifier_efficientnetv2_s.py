"""EfficientNetV2-S (torchvision layout, 21,458,488 parameters with the 1000-class head), 224x224 RGB
yes/no, stochastic depth 0.2 (the "dropout" rng) and dropout 0.2 before the head.

Transfer learning as in configs/classifier_resnet50.py (weights file e.g. efficientnet_v2_s-dd5fe13b.pth):
  python -m jaxdiff.train --config configs/classifier_efficientnetv2_s.py --workdir runs/effv2s \
    --config.data.root=/path/to/brain_tumor_dataset --config.model.num_classes=2 \
    --config.train.init_from=/path/to/efficientnet_v2_s-dd5fe13b.pth --config.train.trainable="('head',)"
Check: python -m jaxdiff.summary --config configs/classifier_efficientnetv2_s.py   (params: 21458488)
Cost:  a GPU/TPU config.
"""
import ml_collections

from configs import classifier_resnet50


def get_config():
    c = classifier_resnet50.get_config()
    c.model = ml_collections.ConfigDict(dict(name="efficientnetv2_s", stem_channels=24, top_channels=1280,
                                             stochastic_depth=0.2, dropout=0.2, num_classes=1000))
    return c
