"""Model registry: the project's small-input nets, every torchvision classifier, and user factories.

`build_model` returns a `ModelBundle` whose weights come from (in order of what the user asked):
a local checkpoint file, a torchvision weights name, the weights shipped in `zoo/weights/` for
this model and dataset, or random initialisation (only when asked for with ``weights="random"``).
Without `weights`, a torchvision model on ImageNet data (``imagenet:DIR``) takes torchvision's
DEFAULT weights (downloaded once into ``torch.hub.get_dir()/checkpoints``); on any other data it
is refused in one line, as a zoo model without shipped weights is: an untrained base model scores
at chance and its search ranks noise. `check_weights` makes that decision from the names alone,
before any data loads.
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

    weights: None (shipped weights for `dataset` if any; torchvision's DEFAULT for a torchvision
    model on ImageNet data; else an error), "random", a torchvision weights name such as
    "IMAGENET1K_V2" or "DEFAULT", or a local checkpoint path. Random initialisation draws from
    `seed`, so "random" is reproducible too.
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
        return _torchvision_model(name, num_classes, dataset, weights)
    else:
        raise UserError(f"unknown model '{name}': see `autoprune models` (or use package.module:factory)")
    dropped = drop_auxiliary_heads(model, name)

    if weights == "random":
        return ModelBundle(model, name, "random", native_channels, num_classes)
    if weights is None:
        path = shipped_weights(name, dataset or "")
        if path is None:
            raise UserError(_no_shipped_weights(name, dataset))
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


def is_imagenet(dataset: str | None) -> bool:
    """Whether a data spec (or a DataBundle's name, which is its spec) is ImageNet: ``imagenet:DIR``."""
    return (dataset or "").partition(":")[0] == "imagenet"


def check_weights(name: str, dataset: str | None, weights: str | None) -> None:
    """Refuse, in one line and from the names alone, a model that has no trained weights for `dataset`.

    What `build_model` would refuse after the data and model are loaded, said before either is:
    a zoo model without shipped weights for the data, a torchvision model on data other than ImageNet.
    """
    if weights is not None:
        return
    if name in SMALL_MODELS and shipped_weights(name, dataset or "") is None:
        raise UserError(_no_shipped_weights(name, dataset))
    if name not in SMALL_MODELS and ":" not in name and not is_imagenet(dataset) and name in torchvision_models():
        raise UserError(_no_torchvision_weights(name, dataset))


def _no_shipped_weights(name: str, dataset: str | None) -> str:
    return (f"no trained weights for {name} on {dataset}: pass --weights FILE "
            f"(train one with `autoprune train {name} --out {name}.pt`) or --weights random for a pipeline check")


# `autoprune train` on this 2-core CPU: ResNet-20 took 413 s an epoch (its model card, one thread); a training step
# of torchvision's ResNet-50 at 28x28 measured 3.9x ResNet-20's (0.55 vs 0.14 s, batch 128, two threads).
TRAIN_HINT = "hours on a 2-core CPU: ResNet-50 about 30 min an epoch, 12 epochs"


def _no_torchvision_weights(name: str, dataset: str | None) -> str:
    import torchvision

    try:
        example = torchvision.models.get_model_weights(name).DEFAULT.name
    except (ValueError, KeyError, AttributeError):  # a classifier torchvision ships no weights for
        example = "IMAGENET1K_V1"
    return (f"no trained weights for {name} on {dataset}: pass --weights FILE (a checkpoint), "
            f"--weights {example} with --data imagenet:DIR (torchvision's ImageNet weights; without --weights "
            f"ImageNet data takes DEFAULT), a file from `autoprune train {name} --out {name}.pt` ({TRAIN_HINT}), "
            "or --weights random for a pipeline check")


def _torchvision_model(name: str, num_classes: int, dataset: str | None, weights: str | None) -> ModelBundle:
    import torchvision

    if weights is None:
        check_weights(name, dataset, weights)
        weights = "DEFAULT"  # ImageNet data: torchvision's recommended weights
    if weights == "random" or Path(weights).exists():
        with warnings.catch_warnings():  # GoogLeNet/Inception warn that their default init will change
            warnings.simplefilter("ignore", FutureWarning)
            model = torchvision.models.get_model(name, num_classes=num_classes)
        dropped = drop_auxiliary_heads(model, name)
        if weights != "random":
            load_checkpoint(model, Path(weights), skip=dropped)
        return ModelBundle(model, name, weights, 3, num_classes)
    enum = torchvision.models.get_model_weights(name)
    try:
        w = enum[weights.split(".")[-1]] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise UserError(f"unknown weights '{weights}' for {name}: one of "
                        f"{', '.join(m.name for m in enum)} or a local file") from None
    classes = len(w.meta["categories"])
    if classes != num_classes:
        raise UserError(f"weights {w} predict {classes} classes but the data has {num_classes}")
    # Downloaded only here, when the user asked for a torchvision weight (or ImageNet data without --weights).
    model = _download_torchvision(name, w)
    drop_auxiliary_heads(model, name)
    return ModelBundle(model, name, str(w), 3, num_classes)


def _download_torchvision(name: str, w) -> nn.Module:
    """torchvision's model with weights `w`: from torch hub's cache, downloaded there first if missing.

    A failed download (offline) is one line naming the file torchvision expects and where to put it.
    """
    import os
    from urllib.parse import urlparse

    import torchvision

    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)
    cached = target.exists()
    try:
        return torchvision.models.get_model(name, weights=w)
    except Exception as exc:  # offline, a proxy, a failed hash check: any failure to fetch
        if cached:
            raise
        raise UserError(f"cannot download torchvision's {w} ({one_line(exc)}): put {target.name} (from {w.url}) "
                        f"in {target.parent}, or pass --weights FILE") from None


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
