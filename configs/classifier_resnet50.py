"""Seed S4: ResNet-50 (torchvision layout, 25,557,032 parameters with the 1000-class head) on the Kaggle
"brain MRI images for brain tumor detection" folders (root/yes, root/no), 224x224 RGB.

The default head is ImageNet's 1000 classes, so an ImageNet state dict loads whole and the summary shows the
torchvision count. The seed's transfer learning (2 classes, frozen backbone, new head):
  python -m jaxdiff.train --config configs/classifier_resnet50.py --workdir runs/resnet50 \
    --config.data.root=/path/to/brain_tumor_dataset --config.model.num_classes=2 \
    --config.train.init_from=/path/to/resnet50-0676ba61.pth --config.train.trainable="('head',)"
  python -m jaxdiff.evaluate --workdir runs/resnet50
Check: python -m jaxdiff.summary --config configs/classifier_resnet50.py   (params: 25557032)
Cost:  a GPU/TPU config; on 2 CPU cores see the README (classifier section).
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "classification"
    c.model = ml_collections.ConfigDict(dict(name="resnet50", depths=(3, 4, 6, 3), widths=(64, 128, 256, 512),
                                             stem_channels=64, num_classes=1000))
    c.data = ml_collections.ConfigDict(dict(source="image_folder", root="", image_size=224, channels=3, seed=0,
                                            balance="weights", input_norm="imagenet", num_workers=0))
    c.train = ml_collections.ConfigDict(dict(
        steps=2000, batch_size=32, lr=1e-4, warmup_steps=0, lr_schedule="constant", optimizer="adam",
        weight_decay=0.0, grad_clip=0.0, ema=0.0, accum_steps=1, precision="fp32", log_every=20, ckpt_every=500,
        keep_checkpoints=2, max_bad_steps=20, label_smoothing=0.0, class_weights="", trainable=(),
        freeze_batch_stats=True, init_from="", init_head=False))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.eval = ml_collections.ConfigDict(dict(num_examples=None, batch_size=32))
    return c
