"""ResNet-18 for connectivity matrices (He et al. 2016, "Deep Residual Learning", Table 1).

Written here because torchvision has no CPU build on every machine fmriflow runs on. The
layout is the paper's 18-layer network: a 7x7/2 stem with 3x3/2 max-pooling, four stages of
two basic blocks (64, 128, 256, 512 channels; stride 2 from the second stage on, with a
1x1 projection shortcut where the shape changes), global average pooling. Two changes for
FC input: one input channel (a 424 x 424 matrix is a one-channel image) and a ``width``
multiplier (64 by default, as in the paper) so the CPU demo can run a narrow copy.
``forward`` returns the pooled ``8 * width`` features; heads live in the caller.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 trunk: (batch, in_channels, H, W) -> (batch, 8 * width) pooled features."""

    def __init__(self, in_channels: int = 1, width: int = 64):
        super().__init__()
        if width < 1:
            raise ValueError(f"'width' must be a positive integer. Got: {width}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, in_ch = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            ch = width * mult
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_ch, ch, stride), BasicBlock(ch, ch)))
            in_ch = ch
        self.stages = nn.Sequential(*stages)
        self.out_features = in_ch
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero the last BN of each residual branch: every block starts as the identity
        # (Goyal et al. 2017), which stabilises training from few samples.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))  # (B, 8w, H/32, W/32)
        return x.mean(dim=(2, 3))  # global average pooling -> (B, 8w)
