"""PyTorch twins of torchvision's `vgg16` and `efficientnet_v2_s` (torchvision cannot be installed beside
torch 2.13 here), with torchvision's module layout and state-dict key names, so that
`jaxdiff.models.classifiers.port` is tested on the same keys a torchvision checkpoint has. Both take the
jaxdiff model fields (`VGG.from_jax_config`, `EfficientNetV2.from_jax_config`), so small variants run fast.
With the defaults they have torchvision's parameter counts: 138,357,544 and 21,458,488.
"""
from __future__ import annotations

import torch
from torch import nn

VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
V2_S_STAGES = ((True, 1, 3, 1, 24, 2), (True, 4, 3, 2, 48, 4), (True, 4, 3, 2, 64, 4),
               (False, 4, 3, 2, 128, 6), (False, 6, 3, 1, 160, 9), (False, 6, 3, 2, 256, 15))


class VGG(nn.Module):
    """features (conv3x3 + ReLU, "M" max-pool) -> AdaptiveAvgPool2d(pool_size) -> flatten -> classifier
    (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear): torchvision's keys features.i / classifier.i."""

    def __init__(self, layers=VGG16_LAYERS, hidden: int = 4096, pool_size: int = 7, dropout: float = 0.5,
                 num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        feats, c = [], in_channels
        for w in layers:
            if w == "M":
                feats.append(nn.MaxPool2d(2, 2))
            else:
                feats += [nn.Conv2d(c, int(w), 3, padding=1), nn.ReLU(inplace=True)]
                c = int(w)
        self.features = nn.Sequential(*feats)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Linear(c * pool_size * pool_size, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    @classmethod
    def from_jax_config(cls, model_config, in_channels: int = 3) -> "VGG":
        return cls(**{k: v for k, v in dict(model_config).items() if k != "name"}, in_channels=in_channels)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ConvBNAct(nn.Sequential):
    """torchvision's Conv2dNormActivation: conv (no bias, padding (k - 1) // 2) -> BatchNorm -> SiLU (if act)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True,
                 eps: float = 1e-3):
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=eps)]
        super().__init__(*layers, *([nn.SiLU(inplace=True)] if act else []))


class SqueezeExcitation(nn.Module):
    """x * sigmoid(fc2(silu(fc1(avgpool(x))))) with 1x1 convolutions fc1, fc2."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(self.avgpool(x)))))


class MBConv(nn.Module):
    """FusedMBConv (`fused`) or MBConv; `block` holds torchvision's sub-layers in order; residual with
    per-sample stochastic depth when stride 1 and channels unchanged."""

    def __init__(self, fused: bool, expand_ratio: int, kernel: int, stride: int, cin: int, cout: int,
                 sd_prob: float, eps: float = 1e-3):
        super().__init__()
        hidden = cin * expand_ratio
        if fused:
            layers = ([ConvBNAct(cin, hidden, kernel, stride, eps=eps), ConvBNAct(hidden, cout, 1, act=False, eps=eps)]
                      if hidden != cin else [ConvBNAct(cin, cout, kernel, stride, eps=eps)])
        else:
            layers = [ConvBNAct(cin, hidden, 1, eps=eps)] if hidden != cin else []
            layers += [ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, eps=eps),
                       SqueezeExcitation(hidden, max(1, cin // 4)), ConvBNAct(hidden, cout, 1, act=False, eps=eps)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout
        self.sd_prob = sd_prob

    def forward(self, x):
        y = self.block(x)
        if not self.use_res:
            return y
        if self.training and self.sd_prob > 0:
            keep = torch.empty(x.shape[0], 1, 1, 1, device=x.device).bernoulli_(1 - self.sd_prob)
            y = y * keep / (1 - self.sd_prob)
        return x + y


class EfficientNetV2(nn.Module):
    """features.0 stem, features.1..S stages of MBConv blocks, features.S+1 1x1 top conv; avgpool;
    classifier (Dropout, Linear). Stochastic depth rises linearly: block b of N drops with p * b / N."""

    def __init__(self, stages=V2_S_STAGES, stem_channels: int = 24, top_channels: int = 1280,
                 stochastic_depth: float = 0.2, dropout: float = 0.2, bn_eps: float = 1e-3, num_classes: int = 1000,
                 in_channels: int = 3):
        super().__init__()
        feats = [ConvBNAct(in_channels, stem_channels, 3, 2, eps=bn_eps)]
        total, b, cin = sum(s[-1] for s in stages), 0, stem_channels
        for fused, expand, kernel, stride, out, n in stages:
            blocks = []
            for j in range(n):
                blocks.append(MBConv(fused, expand, kernel, stride if j == 0 else 1, cin, out,
                                     stochastic_depth * b / total, bn_eps))
                cin, b = out, b + 1
            feats.append(nn.Sequential(*blocks))
        feats.append(ConvBNAct(cin, top_channels, 1, eps=bn_eps))
        self.features = nn.Sequential(*feats)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(top_channels, num_classes))

    @classmethod
    def from_jax_config(cls, model_config, in_channels: int = 3) -> "EfficientNetV2":
        return cls(**{k: v for k, v in dict(model_config).items() if k != "name"}, in_channels=in_channels)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
