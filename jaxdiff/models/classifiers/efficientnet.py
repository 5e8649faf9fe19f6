"""EfficientNetV2 (torchvision's `efficientnet_v2_s`): Fused-MBConv then MBConv stages with squeeze-excitation,
BatchNorm eps 1e-3, SiLU, stochastic depth rising linearly to `stochastic_depth` over the blocks.

`EfficientNetV2()` is EfficientNetV2-S: 21,458,488 parameters with the 1000-class head. One block class
serves both kinds; `block_layers` lists a block's convolutions (shared with `port.py`).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxdiff.models import register
from jaxdiff.models.classifiers.common import batch_norm, conv, drop_path, global_avg_pool

# (fused, expand_ratio, kernel, stride, out_channels, num_layers) per stage, EfficientNetV2-S.
V2_S_STAGES = ((True, 1, 3, 1, 24, 2), (True, 4, 3, 2, 48, 4), (True, 4, 3, 2, 64, 4),
               (False, 4, 3, 2, 128, 6), (False, 6, 3, 1, 160, 9), (False, 6, 3, 2, 256, 15))


def block_layers(fused: bool, expand_ratio: int, kernel: int, stride: int, cin: int, cout: int) -> list:
    """The convolutions of one (Fused-)MBConv block in order, as (name, features, kernel, stride, groups, act);
    the squeeze-excitation of an MBConv sits before "project". Position in the list = torchvision's
    `block.<index>` (the SE counts as one index)."""
    hidden = cin * expand_ratio
    if fused:
        if hidden == cin:
            return [("fused", cout, kernel, stride, 1, True)]
        return [("expand", hidden, kernel, stride, 1, True), ("project", cout, 1, 1, 1, False)]
    expand = [("expand", hidden, 1, 1, 1, True)] if hidden != cin else []
    return expand + [("depthwise", hidden, kernel, stride, hidden, True), ("se", max(1, cin // 4), 1, 1, 1, True),
                     ("project", cout, 1, 1, 1, False)]


class SqueezeExcite(nn.Module):
    """Channel gate: x * sigmoid(fc2(silu(fc1(mean_hw(x))))), 1x1 convolutions with bias. (B, H, W, C)."""

    squeeze: int

    @nn.compact
    def __call__(self, x):
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.silu(conv(self.squeeze, 1, use_bias=True, name="fc1")(s))
        return x * nn.sigmoid(conv(x.shape[-1], 1, use_bias=True, name="fc2")(s))


class MBConv(nn.Module):
    """Fused-MBConv (`fused`: kxk expand conv) or MBConv (1x1 expand, kxk depthwise, SE), then 1x1 project,
    all BN; residual with stochastic depth `drop_rate` when stride 1 and channels unchanged.
    (B, H, W, Cin) -> (B, H / stride, W / stride, out_channels)."""

    fused: bool
    expand_ratio: int
    kernel: int
    stride: int
    out_channels: int
    drop_rate: float = 0.0
    bn_eps: float = 1e-3

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        y = x
        for name, feat, k, s, groups, act in block_layers(self.fused, self.expand_ratio, self.kernel, self.stride,
                                                          x.shape[-1], self.out_channels):
            if name == "se":
                y = SqueezeExcite(feat, name="se")(y)
                continue
            y = batch_norm(train, self.bn_eps, name=f"{name}_bn")(conv(feat, k, s, groups, name=f"{name}_conv")(y))
            y = nn.silu(y) if act else y
        if self.stride == 1 and x.shape[-1] == self.out_channels:
            y = x + drop_path(self, y, self.drop_rate, train)
        return y


@register("efficientnetv2_s")
class EfficientNetV2(nn.Module):
    """EfficientNetV2 classifier: (B, H, W, 3) -> logits (B, num_classes). Defaults: EfficientNetV2-S.

    Attributes:
      stages: per stage (fused, expand_ratio, kernel, stride, out_channels, num_layers).
      stem_channels, top_channels: widths of the 3x3/2 stem and the final 1x1 convolution.
      stochastic_depth: drop rate of the last block (block b of N drops with rate stochastic_depth * b / N).
      dropout: before the `head` Dense layer.
    """

    stages: tuple = V2_S_STAGES
    stem_channels: int = 24
    top_channels: int = 1280
    stochastic_depth: float = 0.2
    dropout: float = 0.2
    bn_eps: float = 1e-3
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        bn = lambda name: batch_norm(train, self.bn_eps, name=name)  # noqa: E731
        x = nn.silu(bn("stem_bn")(conv(self.stem_channels, 3, 2, name="stem_conv")(x)))
        total, b = sum(s[-1] for s in self.stages), 0
        for i, (fused, expand, kernel, stride, out, n) in enumerate(self.stages):
            for j in range(n):
                x = MBConv(fused, expand, kernel, stride if j == 0 else 1, out, self.stochastic_depth * b / total,
                           self.bn_eps, name=f"stage{i + 1}_{j}")(x, train=train)
                b += 1
        x = nn.silu(bn("top_bn")(conv(self.top_channels, 1, name="top_conv")(x)))
        x = nn.Dropout(self.dropout, deterministic=not train)(global_avg_pool(x))
        return nn.Dense(self.num_classes, name="head")(x)
