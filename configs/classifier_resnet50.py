"""ResNet-50 (torchvision layout, 25,557,032 parameters with the 1000-class head) on the Kaggle
"brain MRI images for brain tumor detection" folders (root/yes, root/no), 224x224 RGB.

The default head is ImageNet's 1000 classes, so an ImageNet state dict loads whole and the summary shows the
torchvision count. The original toolkit's transfer learning (2 classes, frozen backbone, new head):
  python -m jaxdiff.train --config configs/classifier_resnet50.py --workdir runs/resnet50 \
    --config.data.root=/path/to/brain_tumor_dataset --config.model.num_classes=2 \
    --config.train.init_from=/path/to/resnet50-0676ba61.pth --config.train.trainable="('head',)"
  python -m jaxdiff.evaluate --workdir runs/resnet50
Check: python -m jaxdiff.summary --config configs/classifier_resnet50.py   (params: 25557032)
Cost:  a GPU/TPU config; on 2 CPU cores see the README (classifier section).
"""
import ml_collections

from jaxdiff import config_defaults


def get_config():
    c = config_defaults.get_config("data", "train", "mesh", "eval")
    c.task = "classification"
    c.model = ml_collections.ConfigDict(dict(name="resnet50", depths=(3, 4, 6, 3), widths=(64, 128, 256, 512),
                                             stem_channels=64, num_classes=1000))
    c.data.update(dict(source="image_folder", image_size=224, channels=3, seed=0, balance="weights",
                       input_norm="imagenet"))
    c.train.update(dict(steps=2000, batch_size=32, lr=1e-4, lr_schedule="constant", optimizer="adam",
                        log_every=20, ckpt_every=500, keep_checkpoints=2, class_weights=""))
    c.eval.batch_size = 32
    return c
