"""torchvision segmentation models and a segmentation data factory, for the matrix's CLI path.

`--model seg_zoo:fcn_resnet50` builds the model without any weights (backbone included: nothing is
downloaded); `--data seg_zoo:shapes64` gives 64x64 images whose masks are a bright square, and an
`evaluate` that scores pixel accuracy on a held-out set of them.
"""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

SEGMENTATION = ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
CLASSES = 3


def segmentation_model(name: str, num_classes: int = CLASSES) -> torch.nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)


def __getattr__(name: str):  # seg_zoo:<model name> is a model factory
    if name in SEGMENTATION:
        return lambda num_classes=CLASSES: segmentation_model(name, num_classes)
    raise AttributeError(name)


def squares(n: int, size: int = 64, seed: int = 0) -> TensorDataset:
    """Noise images with a bright square; mask: 1 inside the square, 2 on its border row, 0 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g) * 0.3
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        x, y = torch.randint(0, size // 2, (2,), generator=g).tolist()
        images[i, :, y:y + size // 2, x:x + size // 2] += 1.0
        masks[i, y:y + size // 2, x:x + size // 2] = 1
        masks[i, y, x:x + size // 2] = 2
    return TensorDataset(images, masks)


def pixel_accuracy(data: TensorDataset):
    """evaluate(model) -> the fraction of pixels whose argmax class is the mask's."""
    images, masks = data.tensors

    @torch.no_grad()
    def evaluate(model: torch.nn.Module) -> float:
        device = next(model.parameters()).device
        out = model(images.to(device))["out"]
        return float((out.argmax(1).cpu() == masks).float().mean())

    return evaluate


def shapes64():
    return {"train": squares(24), "test": None, "num_classes": CLASSES, "evaluate": pixel_accuracy(squares(4, seed=1))}
