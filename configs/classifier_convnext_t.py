"""ConvNeXt-T (torchvision layout, 28,589,128 parameters with the 1000-class head), 224x224 RGB
yes/no, drop path 0.1, LayerScale 1e-6; AdamW as ConvNeXt is usually trained.

Transfer learning as in configs/classifier_resnet50.py (torchvision convnext_tiny-983f1562.pth or a Hugging
Face facebook/convnext-tiny-224 pytorch_model.bin):
  python -m jaxdiff.train --config configs/classifier_convnext_t.py --workdir runs/convnext_t \
    --config.data.root=/path/to/brain_tumor_dataset --config.model.num_classes=2 \
    --config.train.init_from=/path/to/convnext_tiny-983f1562.pth --config.train.trainable="('final_norm', 'head')"
Check: python -m jaxdiff.summary --config configs/classifier_convnext_t.py   (params: 28589128)
Cost:  a GPU/TPU config.
"""
import ml_collections

from configs import classifier_resnet50


def get_config():
    c = classifier_resnet50.get_config()
    c.model = ml_collections.ConfigDict(dict(name="convnext_t", depths=(3, 3, 9, 3), dims=(96, 192, 384, 768),
                                             drop_path=0.1, layer_scale_init=1e-6, num_classes=1000))
    c.train.update(dict(optimizer="adamw", weight_decay=0.05))
    return c
