"""timm models as model factories: `--model timm_zoo:resnet18` is `timm.create_model("resnet18")`, random weights."""
from __future__ import annotations


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def factory(num_classes: int = 10):
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes)

    return factory
