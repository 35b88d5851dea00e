"""ResNets in two forms: CIFAR (3x3 stride-1 stem, no max-pool) and torchvision (ImageNet).

Parameter names follow torchvision (``conv1``, ``layer1.0.conv2``, ``fc``) so layer tables,
ERK references and checkpoints line up with the rest of the ecosystem. ``base_width`` is the
width of the first stage (64 for the paper's ResNet-18); stages are W, 2W, 4W, 8W, which is
how the Sparse-IFT reference widens the network (W = int(64 * sqrt(b))).

Bottleneck blocks (ResNet-50/101/152, Wide ResNet, ResNeXt) follow torchvision's v1.5 layout
(stride on the 3x3 conv): a block of ``planes`` has inner width
``int(planes * width_per_group / 64) * groups`` and ``4 * planes`` outputs, the same formula
torchvision applies, so widening W widens every block (ResNeXt keeps its group count and widens
each group).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """The projection shortcut (1x1 conv + BN) where the block changes shape, else None."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, groups: int = 1,
                 width_per_group: int = 64) -> None:
        super().__init__()
        width, c_out = int(planes * width_per_group / 64) * groups, planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """``stem='cifar'`` for 32x32-class inputs, ``'imagenet'`` for 224x224. Basic blocks, or
    bottleneck blocks with ``bottleneck={"groups": g, "width_per_group": w}``."""

    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        base_width: int = 64,
        stem: str = "cifar",
        zero_init_residual: bool = True,
        bottleneck: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        widths = [base_width * 2**i for i in range(len(blocks))]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c_in = widths[0]
        for i, (n, c_out) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layer = []
            for j in range(n):
                s = stride if j == 0 else 1
                if bottleneck is None:
                    layer.append(BasicBlock(c_in, c_out, s))
                else:
                    layer.append(Bottleneck(c_in, c_out, s, **bottleneck))
                c_in = layer[-1].bn3.num_features if bottleneck is not None else c_out
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        self._init(zero_init_residual)

    def _init(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # The last BN of each block starts at zero: every block is the identity at init.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.bn3.weight if isinstance(m, Bottleneck) else m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
# torchvision's bottleneck ResNets: blocks per stage, groups, width per group
BOTTLENECKS = {
    "resnet50": ((3, 4, 6, 3), 1, 64), "resnet101": ((3, 4, 23, 3), 1, 64),
    "resnet152": ((3, 8, 36, 3), 1, 64),
    "wide_resnet50_2": ((3, 4, 6, 3), 1, 128), "wide_resnet101_2": ((3, 4, 23, 3), 1, 128),
    "resnext50_32x4d": ((3, 4, 6, 3), 32, 4), "resnext101_32x8d": ((3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": ((3, 4, 23, 3), 64, 4),
}


def torchvision_resnet(name: str, num_classes: int, in_channels: int, width: int) -> "ResNet":
    """torchvision's ResNet ``name`` (ImageNet stem, no zero-init) with first-stage width W."""
    if name in DEPTHS:
        return ResNet(DEPTHS[name], num_classes, in_channels, width, "imagenet", False)
    blocks, groups, per_group = BOTTLENECKS[name]
    return ResNet(blocks, num_classes, in_channels, width, "imagenet", False,
                  {"groups": groups, "width_per_group": per_group})
