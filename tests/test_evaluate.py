"""Adaptive BN: recalibration sees the eval-mode network (no dropout noise, no train-only branches)."""
from __future__ import annotations

import torch
from torch import nn

from autoprune.evaluate import recalibrate_bn


def test_bn_recalibration_runs_without_dropout_or_train_only_branches():
    """Only BN is in train mode: statistics are those of the eval-mode network, and branches stay off."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.drop, self.bn = nn.Conv2d(3, 8, 3), nn.Dropout(0.5), nn.BatchNorm2d(8)
            self.aux = nn.Linear(8, 1)

        def forward(self, x):
            y = self.bn(self.drop(self.conv(x)))
            if self.training:
                raise RuntimeError("a train-only branch ran")
            return y

    torch.manual_seed(0)
    net = Net().train()
    calib = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    recalibrate_bn(net, calib, torch.device("cpu"))
    assert net.training and net.drop.training  # modes restored
    with torch.no_grad():
        feats = torch.cat([net.conv(x) for x in calib])
    assert torch.allclose(net.bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(net.bn.running_var, feats.var((0, 2, 3)), rtol=1e-3)
