"""The brain-tumour toolkit's "custom CNN" baseline. The original names it but gives no layers, so this is a small
documented design: `len(widths)` blocks of [3x3 conv (no bias) -> BatchNorm -> ReLU -> 2x2 max-pool], global average
pooling, dropout, and the `head` Dense layer. With widths (32, 64, 128, 256) and 2 classes: 389,410
parameters (the counts do not depend on the input size).
"""
from __future__ import annotations

import flax.linen as nn

from jaxdiff.models import register
from jaxdiff.models.classifiers.common import batch_norm, conv, global_avg_pool
from jaxdiff.models.layers import max_pool2


@register("simple_cnn")
class SimpleCNN(nn.Module):
    """(B, H, W, C) -> logits (B, num_classes); H and W are halved `len(widths)` times (need >= 2 ** len)."""

    widths: tuple = (32, 64, 128, 256)
    dropout: float = 0.5
    num_classes: int = 2

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        for i, w in enumerate(self.widths):
            x = nn.relu(batch_norm(train, name=f"block{i}_bn")(conv(int(w), 3, name=f"block{i}_conv")(x)))
            x = max_pool2(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(global_avg_pool(x))
        return nn.Dense(self.num_classes, name="head")(x)
