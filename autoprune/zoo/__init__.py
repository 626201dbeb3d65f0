"""Model registry: the project's small-input nets, every torchvision classifier, and user factories.

`build_model` returns a `ModelBundle` whose weights come from (in order of what the user asked):
a local checkpoint file, a torchvision weights name, the weights shipped in `zoo/weights/` for
this model and dataset, or random initialisation (only when asked for with ``weights="random"``).
Train-only auxiliary classifiers (GoogLeNet, Inception v3) are dropped, with a warning
(`autoprune.support`); a checkpoint's entries for them are ignored.
"""
from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import UserError, import_factory, one_line
from autoprune.support import drop_auxiliary_heads
from autoprune.zoo.cifar_resnet import CifarResNet
from autoprune.zoo.small_nets import SmallMobileNetV2, SmallVGG

WEIGHTS_DIR = Path(__file__).parent / "weights"

# name -> (factory(num_classes, in_channels), description)
SMALL_MODELS: dict[str, tuple[Callable[[int, int], nn.Module], str]] = {
    **{f"resnet{d}": ((lambda d: lambda nc, ic: CifarResNet(d, nc, ic))(d),
                      f"CIFAR-style ResNet-{d} (16/32/64 channels)") for d in (20, 32, 44, 56, 110)},
    "vgg11": (lambda nc, ic: SmallVGG("vgg11", nc, ic), "VGG-11 with BN for small inputs"),
    "vgg16": (lambda nc, ic: SmallVGG("vgg16", nc, ic), "VGG-16 with BN for small inputs"),
    "mobilenetv2": (lambda nc, ic: SmallMobileNetV2(nc, ic), "MobileNetV2 for small inputs"),
}


@dataclass
class ModelBundle:
    model: nn.Module
    name: str
    weights: str  # where the weights came from: a path, a torchvision name, "shipped", "random"
    in_channels: int
    num_classes: int
    card: dict = field(default_factory=dict)


def torchvision_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[tuple[str, str]]:
    rows = [(name, desc) for name, (_, desc) in SMALL_MODELS.items()]
    rows += [(name, "torchvision") for name in torchvision_models()]
    return rows


def shipped_weights(name: str, dataset: str) -> Path | None:
    path = WEIGHTS_DIR / f"{name}-{dataset}.pt"
    return path if path.exists() else None


def shipped_card(name: str, dataset: str) -> dict:
    path = WEIGHTS_DIR / f"{name}-{dataset}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def build_model(name: str, *, num_classes: int, in_channels: int, dataset: str | None = None,
                weights: str | None = None, seed: int = 0) -> ModelBundle:
    """Build `name` for `num_classes` outputs and load the weights the user asked for.

    weights: None (shipped weights for `dataset` if any, else an error), "random", a torchvision
    weights name such as "IMAGENET1K_V2" or "DEFAULT", or a local checkpoint path. Random
    initialisation draws from `seed`, so "random" is reproducible too.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(name, num_classes, in_channels, dataset, weights)


def _build(name: str, num_classes: int, in_channels: int, dataset: str | None, weights: str | None) -> ModelBundle:
    if ":" in name and not Path(name).exists():
        model, native_channels = _user_model(name, num_classes, in_channels), in_channels
    elif name in SMALL_MODELS:
        model, native_channels = SMALL_MODELS[name][0](num_classes, in_channels), in_channels
    elif name in torchvision_models():
        return _torchvision_model(name, num_classes, weights)
    else:
        raise UserError(f"unknown model '{name}': see `autoprune models` (or use package.module:factory)")
    dropped = drop_auxiliary_heads(model, name)

    if weights == "random":
        return ModelBundle(model, name, "random", native_channels, num_classes)
    if weights is None:
        path = shipped_weights(name, dataset or "")
        if path is None:
            raise UserError(f"no trained weights for {name} on {dataset}: pass --weights FILE "
                            f"(train one with `autoprune train {name}`) or --weights random")
        load_checkpoint(model, path, skip=dropped)
        return ModelBundle(model, name, "shipped", native_channels, num_classes,
                           shipped_card(name, dataset or ""))
    path = Path(weights)
    if not path.exists():
        raise UserError(f"weights file not found: {weights}")
    load_checkpoint(model, path, skip=dropped)
    return ModelBundle(model, name, str(path), native_channels, num_classes)


def load_checkpoint(model: nn.Module, path: Path, *, skip: list[str] | tuple = ()) -> None:
    """Load a state_dict, a {'state_dict': ...} / {'model': ...} checkpoint, or a whole pickled module.

    Entries under the module names in `skip` (auxiliary heads the model dropped) are ignored.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise UserError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds no state_dict")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    obj = {k: v for k, v in obj.items() if k.split(".", 1)[0] not in skip}
    own = model.state_dict()
    missing = [k for k in own if k not in obj]
    unexpected = [k for k in obj if k not in own]
    wrong = [k for k in own if k in obj and tuple(obj[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                  else f"{wrong[0]} has shape {tuple(obj[wrong[0]].shape)}, model wants {tuple(own[wrong[0]].shape)}")
        raise UserError(f"checkpoint {path} does not match the model architecture ({detail})")
    model.load_state_dict(obj)


def _torchvision_model(name: str, num_classes: int, weights: str | None) -> ModelBundle:
    import torchvision

    if weights is None or weights == "random" or Path(weights).exists():
        with warnings.catch_warnings():  # GoogLeNet/Inception warn that their default init will change
            warnings.simplefilter("ignore", FutureWarning)
            model = torchvision.models.get_model(name, num_classes=num_classes)
        dropped = drop_auxiliary_heads(model, name)
        if weights not in (None, "random"):
            load_checkpoint(model, Path(weights), skip=dropped)
        return ModelBundle(model, name, weights or "random", 3, num_classes)
    enum = torchvision.models.get_model_weights(name)
    try:
        w = enum[weights.split(".")[-1]] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise UserError(f"unknown weights '{weights}' for {name}: one of "
                        f"{', '.join(m.name for m in enum)} or a local file") from None
    classes = len(w.meta["categories"])
    if classes != num_classes:
        raise UserError(f"weights {w} predict {classes} classes but the data has {num_classes}")
    # Downloaded only here, when the user asked for a named torchvision weight.
    model = torchvision.models.get_model(name, weights=w)
    drop_auxiliary_heads(model, name)
    return ModelBundle(model, name, str(w), 3, num_classes)


def _user_model(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    factory = import_factory(spec, "model")
    params = inspect.signature(factory).parameters
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if k in params}
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the user's own code: any failure, one line
        raise UserError(f"model factory '{spec}' failed: {one_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    return model
