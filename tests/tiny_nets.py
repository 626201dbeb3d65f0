"""A tiny CNN for latency tests: few layer shapes (a table in seconds), latency dominated by compute."""
from __future__ import annotations

from torch import Tensor, nn


class TinyNet(nn.Module):
    """Five conv-bn-relu blocks (the last two share a shape), pooling, classifier; ~29 MMACs at 1x28x28."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*block(in_channels, 16), *block(16, 64), *block(64, 64, 2),
                                      *block(64, 64), *block(64, 64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return TinyNet(num_classes, in_channels)
