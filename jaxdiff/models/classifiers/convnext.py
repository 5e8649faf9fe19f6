"""ConvNeXt (torchvision's `convnext_tiny`): patchify stem, blocks of 7x7 depthwise conv -> LayerNorm ->
4x MLP (exact GELU) -> LayerScale, stochastic depth, LayerNorm + strided-conv downsampling between stages.

`ConvNeXt()` is ConvNeXt-T: 28,589,128 parameters with the 1000-class head (`final_norm` then `head`).
"""
from __future__ import annotations

import flax.linen as nn

from jaxdiff.models import register
from jaxdiff.models.classifiers.common import conv, drop_path, global_avg_pool
from jaxdiff.models.layers import LayerNorm

LN_EPS = 1e-6


class ConvNeXtBlock(nn.Module):
    """x + drop_path(gamma * mlp(norm(dwconv7x7(x)))); `gamma` (C,) is the LayerScale, initialised to
    `layer_scale_init`. (B, H, W, C) -> same."""

    drop_rate: float = 0.0
    layer_scale_init: float = 1e-6

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        dim = x.shape[-1]
        y = conv(dim, 7, groups=dim, use_bias=True, name="dwconv")(x)
        y = LayerNorm(epsilon=LN_EPS, name="norm")(y)
        y = nn.gelu(nn.Dense(4 * dim, name="pwconv1")(y), approximate=False)
        y = nn.Dense(dim, name="pwconv2")(y)
        gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale_init), (dim,))
        return x + drop_path(self, gamma.astype(y.dtype) * y, self.drop_rate, train)


@register("convnext_t")
class ConvNeXt(nn.Module):
    """ConvNeXt classifier: (B, H, W, 3) -> logits (B, num_classes). Defaults: ConvNeXt-T.

    Attributes:
      depths, dims: blocks and channels per stage.
      drop_path: stochastic depth of the last block (block b of N drops with rate drop_path * b / (N - 1)).
      layer_scale_init: initial LayerScale value.
    """

    depths: tuple = (3, 3, 9, 3)
    dims: tuple = (96, 192, 384, 768)
    drop_path: float = 0.1
    layer_scale_init: float = 1e-6
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.Conv(self.dims[0], (4, 4), (4, 4), padding="VALID", name="stem_conv")(x)
        x = LayerNorm(epsilon=LN_EPS, name="stem_norm")(x)
        total, b = sum(self.depths), 0
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            if i > 0:
                x = LayerNorm(epsilon=LN_EPS, name=f"downsample{i}_norm")(x)
                x = nn.Conv(dim, (2, 2), (2, 2), padding="VALID", name=f"downsample{i}_conv")(x)
            for j in range(depth):
                rate = self.drop_path * b / max(total - 1, 1)
                x = ConvNeXtBlock(rate, self.layer_scale_init, name=f"stage{i + 1}_{j}")(x, train=train)
                b += 1
        x = LayerNorm(epsilon=LN_EPS, name="final_norm")(global_avg_pool(x))
        return nn.Dense(self.num_classes, name="head")(x)
