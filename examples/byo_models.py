"""Bring your own model: networks written as a user would, none of them FedADMP's. A run builds one by
``model.arch: "examples.byo_models:<factory>"`` (importable on the server and on every device); a
factory takes ``(num_classes, input_shape)`` and may take ``width``. See docs/models.md."""

from __future__ import annotations

import torch
from torch import nn


class InvertedResidual(nn.Module):
    """MobileNetV2-style: 1x1 expand -> BN -> ReLU -> 3x3 depthwise -> BN -> ReLU -> 1x1 project -> BN, + input."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Conv2d(channels, hidden, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.expand_bn(self.expand(x)))
        h = torch.relu(self.depthwise_bn(self.depthwise(h)))
        return x + self.project_bn(self.project(h))


class TinyMobileNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)  # (N,C,H,W) -> (N,16,H,W), pooled to H/2
        self.stem_bn = nn.BatchNorm2d(16)
        self.block1 = InvertedResidual(16, 2)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)  # -> (N,32,H/4,W/4)
        self.down_bn = nn.BatchNorm2d(32)
        self.block2 = InvertedResidual(32, 2)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.stem_bn(self.stem(x))), 2)
        x = torch.relu(self.down_bn(self.down(self.block1(x))))
        return self.head(self.block2(x).mean(dim=(2, 3)))


def tiny_mobilenet(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A stem, two inverted-residual blocks with depthwise convs and a strided conv between, for (C, H, W) images."""
    return TinyMobileNet(num_classes, input_shape[0])


def plain_mlp(num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """Linear -> BN -> ReLU twice, then the classifier, for feature vectors (D,)."""
    h = max(2, round(32 * width))
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(input_shape[0], h),
        nn.BatchNorm1d(h),
        nn.ReLU(),
        nn.Linear(h, h // 2),
        nn.BatchNorm1d(h // 2),
        nn.ReLU(),
        nn.Linear(h // 2, num_classes),
    )
