"""ResNet with bottleneck blocks (torchvision's ResNet-50 v1.5 layout: stride on the 3x3 convolution).

`ResNet()` is ResNet-50: 25,557,032 parameters with the 1000-class head. Parameter names follow torchvision
(`conv1`, `bn1`, `layer{i}_{j}/conv1..3`, `downsample_conv/bn`) so `port.py` maps them one to one; the
classifier is the `head` Dense layer.
"""
from __future__ import annotations

import flax.linen as nn

from jaxdiff.models import register
from jaxdiff.models.classifiers.common import batch_norm, conv, global_avg_pool


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand (x `expansion`), each BN; residual with a 1x1 projection when
    the shape changes. (B, H, W, Cin) -> (B, H / stride, W / stride, width * expansion)."""

    width: int
    stride: int = 1
    expansion: int = 4

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        out = self.width * self.expansion
        y = nn.relu(batch_norm(train, name="bn1")(conv(self.width, 1, name="conv1")(x)))
        y = nn.relu(batch_norm(train, name="bn2")(conv(self.width, 3, self.stride, name="conv2")(y)))
        y = batch_norm(train, name="bn3")(conv(out, 1, name="conv3")(y))
        if self.stride != 1 or x.shape[-1] != out:
            x = batch_norm(train, name="downsample_bn")(conv(out, 1, self.stride, name="downsample_conv")(x))
        return nn.relu(x + y)


@register("resnet50")
class ResNet(nn.Module):
    """Bottleneck ResNet classifier: (B, H, W, 3) -> logits (B, num_classes). Defaults: ResNet-50.

    Attributes:
      depths: blocks per stage ((3, 4, 6, 3) ResNet-50, (3, 4, 23, 3) ResNet-101).
      widths: bottleneck widths per stage (outputs are 4x).
      num_classes: size of the `head` Dense layer.
    """

    depths: tuple = (3, 4, 6, 3)
    widths: tuple = (64, 128, 256, 512)
    stem_channels: int = 64
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.relu(batch_norm(train, name="bn1")(conv(self.stem_channels, 7, 2, name="conv1")(x)))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                x = Bottleneck(width, stride, name=f"layer{i + 1}_{j}")(x, train=train)
        return nn.Dense(self.num_classes, name="head")(global_avg_pool(x))
