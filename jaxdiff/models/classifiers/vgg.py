"""VGG (torchvision's `vgg16`: 13 convolutions, no BatchNorm, three fully connected layers).

`VGG()` is VGG16: 138,357,544 parameters with the 1000-class head. The features are average-pooled to 7x7
(PyTorch's AdaptiveAvgPool2d, the identity at 224x224) and flattened in (H, W, C) order; `port.py` permutes
torchvision's (C, H, W)-ordered first classifier weight to match.
"""
from __future__ import annotations

import flax.linen as nn

from jaxdiff.models import register
from jaxdiff.models.classifiers.common import adaptive_avg_pool, conv
from jaxdiff.models.layers import max_pool2

VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register("vgg16")
class VGG(nn.Module):
    """VGG classifier: (B, H, W, 3) -> logits (B, num_classes).

    Attributes:
      layers: convolution widths (3x3, ReLU) and "M" for 2x2 max-pooling, in order (default VGG16).
      hidden: width of the two hidden fully connected layers `fc1`, `fc2` (ReLU, dropout).
      pool_size: side of the adaptive average pool before flattening.
      num_classes: size of the `head` Dense layer.
    """

    layers: tuple = VGG16_LAYERS
    hidden: int = 4096
    pool_size: int = 7
    dropout: float = 0.5
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        k = 0
        for w in self.layers:
            if w == "M":
                x = max_pool2(x)
            else:
                x = nn.relu(conv(int(w), 3, use_bias=True, name=f"conv{k}")(x))
                k += 1
        x = adaptive_avg_pool(x, self.pool_size).reshape(x.shape[0], -1)
        for name in ("fc1", "fc2"):
            x = nn.relu(nn.Dense(self.hidden, name=name)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="head")(x)
