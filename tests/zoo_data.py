"""Random RGB image datasets for the torchvision coverage matrix (`--data zoo_data:images64`).

72 training images: a held-out split of 8 plus one BN-calibration batch of 64. Inception v3
needs at least 75x75 pixels, so it gets the 96x96 set.
"""
from __future__ import annotations

import torch

from autoprune.data import TensorSplit


def _images(size: int, n_train: int = 72, n_test: int = 8, classes: int = 10):
    g = torch.Generator().manual_seed(size)

    def split(n: int) -> TensorSplit:
        return TensorSplit(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))

    return split(n_train), split(n_test), classes


def images64():
    return _images(64)


def images96():
    return _images(96)
