"""Small nets with what real models do and pruning breaks: fixed splits, modules never called,
convolutions with extra per-channel parameters, concatenations feeding residual adds (ReXNet)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class FixedSplitNet(nn.Module):
    """`block.0`'s 32 channels are split into fixed halves (as MixNet's mixed kernels do): pruning it breaks."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16)
        self.body = conv_bn(16, 24)
        self.split_in = nn.Conv2d(24, 32, 1)
        self.left, self.right = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 5, padding=2)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(self.split_in(self.body(self.stem(x))), [16, 16], dim=1)
        x = torch.cat([self.left(a), self.right(b)], dim=1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class AllSplitNet(nn.Module):
    """Its one prunable group feeds a fixed split: nothing can be pruned."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 32, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(self.mid(self.stem(x)), [16, 16], dim=1)
        return self.fc(F.adaptive_avg_pool2d(torch.cat([b, a], 1), 1).flatten(1))


class UncalledNet(nn.Module):
    """`spare` is defined but the forward never calls it (a head for another task)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b, self.c = conv_bn(1, 16), conv_bn(16, 32, 2), conv_bn(32, 32)
        self.spare = nn.Conv2d(32, 64, 3)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.c(self.b(self.a(x))), 1).flatten(1))


class GainConv2d(nn.Conv2d):
    """A convolution subclass with a per-output-channel gain (as timm's ScaledStdConv2d)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding, self.dilation, self.groups)


class GainLinear(nn.Linear):
    """A linear subclass (as timm's Linear): counted and ignored as the classifier like nn.Linear."""


class GainNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a = GainConv2d(1, 16, 3, padding=1)
        self.b = GainConv2d(16, 32, 3, stride=2, padding=1)
        self.c = GainConv2d(32, 32, 3, padding=1)
        self.fc = GainLinear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.c(F.relu(self.b(F.relu(self.a(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class PartialResidualNet(nn.Module):
    """ReXNet's pattern: each block widens by concatenation and adds its input to the first channels."""

    def __init__(self, blocks: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16)
        widths = [16 + 4 * i for i in range(blocks + 1)]
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.BatchNorm2d(2 * c), nn.ReLU(),
                                                  nn.Conv2d(2 * c, c + 4, 1), nn.BatchNorm2d(c + 4))
                                    for c in widths[:-1])
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            c = x.shape[1]
            y = block(x)
            x = torch.cat([y[:, :c] + x, y[:, c:]], dim=1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DictOutputNet(nn.Module):
    """A segmentation-style net: a dict of per-pixel class maps, as torchvision's FCN returns."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_bn(3, 16), conv_bn(16, 32, 2), conv_bn(32, 32))
        self.classifier = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        return {"out": F.interpolate(self.classifier(self.backbone(x)), size=size, mode="bilinear")}


class TwoInputNet(nn.Module):
    """Takes (image, gain): a model whose input is not one tensor; returns a tuple (logits, features)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b, self.c = conv_bn(1, 16), conv_bn(16, 32, 2), conv_bn(32, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor, gain: Tensor) -> tuple[Tensor, Tensor]:
        features = self.c(self.b(self.a(x * gain.view(-1, 1, 1, 1))))
        return self.fc(F.adaptive_avg_pool2d(features, 1).flatten(1)), features


class NeedsTwelveNet(nn.Module):
    """`b.0`'s output must keep 12 channels or more (as an op of fixed minimum width would): its group runs
    with half its 32 channels gone, and breaks with 80% gone."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b, self.c = conv_bn(1, 16), conv_bn(16, 32, 2), conv_bn(32, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.b(self.a(x))
        if h.shape[1] < 12:
            raise RuntimeError(f"needs at least 12 channels, got {h.shape[1]}")
        return self.fc(F.adaptive_avg_pool2d(self.c(h), 1).flatten(1))
