"""The brain-tumour toolkit's U-Net segmenter (512x512 input, 2-class softmax output), Keras-style.

Encoder: one Conv-BN-ReLU x2 block per width followed by 2x2 max pooling (widths 64, 128, 256, 512); bridge:
the same block at 1024; decoder: per encoder level, from the deepest, a 2x2 stride-2 transposed convolution to
that level's width, concatenation [upsampled, encoder block output] and a Conv-BN-ReLU x2 block; then a 1x1
convolution to `num_classes` logits (the softmax is in the loss).
Convolutions carry biases and BatchNorm has scale and offset, as Keras layers do by default; BatchNorm uses
Keras's momentum 0.99 and epsilon 1e-3, running statistics in the "batch_stats" collection.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdiff.models import register
from jaxdiff.models.layers import Conv, PatchConvTranspose, max_pool2


class ConvBNReLU2(nn.Module):
    """(conv3x3 -> BatchNorm -> ReLU) x 2: (B, H, W, C) -> (B, H, W, width)."""

    width: int
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        for i in range(2):
            x = Conv(self.width, (3, 3), padding="SAME", name=f"conv{i + 1}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             name=f"bn{i + 1}")(x)
            x = nn.relu(x)
        return x


@register("unet512")
class UNet512(nn.Module):
    """U-Net segmenter of the brain-tumour toolkit.

    Attributes:
      widths: encoder widths followed by the bridge width (seed: 64, 128, 256, 512, 1024); the input side must
        be divisible by 2^(len(widths) - 1).
      num_classes: output logits per pixel (seed: 2, background / tumour).
      bn_momentum, bn_epsilon: BatchNorm running-average momentum and epsilon.
    Call: x (B, H, W, C) -> logits (B, H, W, num_classes).
    """

    widths: Sequence[int] = (64, 128, 256, 512, 1024)
    num_classes: int = 2
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3

    def block(self, width: int, name: str) -> ConvBNReLU2:
        return ConvBNReLU2(width, self.bn_momentum, self.bn_epsilon, name=name)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        skips = []
        for level, width in enumerate(self.widths[:-1]):
            x = self.block(width, f"enc{level}")(x, train=train)
            skips.append(x)
            x = max_pool2(x)
        x = self.block(self.widths[-1], "bridge")(x, train=train)
        for level in reversed(range(len(self.widths) - 1)):
            x = PatchConvTranspose(self.widths[level], name=f"up{level}")(x)
            x = self.block(self.widths[level], f"dec{level}")(jnp.concatenate([x, skips.pop()], axis=-1), train=train)
        return nn.Conv(self.num_classes, (1, 1), name="head")(x)
