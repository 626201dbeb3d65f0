"""Dataset registry and the train / held-out / test splits every search uses.

Searches score candidates on a held-out split carved from the *training* set by a fixed seed;
the test set is touched only for the final report. Small datasets are held as preprocessed
float tensors (`TensorSplit`) so evaluation is pure forward passes; large ones (ImageNet)
stay as torchvision datasets and are streamed.
"""
from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from autoprune.errors import UserError, import_factory, one_line

log = logging.getLogger(__name__)

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CALIB_BATCH = 64  # images per BN-recalibration batch; what is left of the training set must fill one

DATASETS = {
    "fashion-mnist": "Fashion-MNIST, 28x28 grey, 10 classes (Debian dataset-fashion-mnist or a torchvision root)",
    "cifar10": "CIFAR-10 through torchvision (cifar10 or cifar10:ROOT)",
    "cifar100": "CIFAR-100 through torchvision (cifar100 or cifar100:ROOT)",
    "imagenet:PATH": "ImageNet as PATH/train and PATH/val folders, 224x224",
    "folder:PATH": "any ImageFolder layout PATH/train and PATH/val, 224x224",
    "package.module:factory": "your factory() -> (train_dataset, test_dataset, num_classes), or a dict of "
                              "train, test, num_classes and optionally evaluate, example_inputs, batch_to_inputs",
}


class TensorSplit(Dataset):
    """Preprocessed images and labels held in memory; indexing returns (image, label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def subset(self, idx: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[idx], self.labels[idx])


@dataclass
class DataBundle:
    name: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    train: Dataset  # training set minus the held-out split: training, fine-tuning, BN recalibration
    heldout: Dataset  # carved from the training set: what searches score on
    test: Dataset  # final report only
    augment: bool = True  # random crop + flip during training (tensor splits only)
    # For models that are not classifiers of the first batch element (a data factory's dict, or the Python API):
    evaluate: Callable | None = None  # evaluate(model) -> float in [0, 1]: replaces held-out top-1
    example_inputs: object = None  # the model's input (tensor, tuple or dict, batch included) to trace it with
    batch_to_inputs: Callable | None = None  # a batch of `train` -> the model's input (default: its first element)

    def with_channels(self, channels: int) -> DataBundle:
        """Repeat grey images to 3 channels for models that need RGB input (torchvision nets)."""
        if channels == self.in_channels:
            return self
        if self.in_channels != 1 or not isinstance(self.train, TensorSplit):
            raise UserError(f"model wants {channels} input channels, {self.name} has {self.in_channels}")

        def rep(s: Dataset) -> Dataset:
            assert isinstance(s, TensorSplit)
            return TensorSplit(s.images.expand(-1, channels, -1, -1).contiguous(), s.labels)

        return replace(self, in_channels=channels, train=rep(self.train), heldout=rep(self.heldout),
                       test=rep(self.test))


def load_data(spec: str, *, heldout_size: int = 5000, split_seed: int = 0) -> DataBundle:
    """Parse a dataset spec (see DATASETS) and carve the held-out split from its training set."""
    kind, _, arg = spec.partition(":")
    if kind == "fashion-mnist":
        train, test = _fashion_mnist(arg or None)
        return _carve(spec, 10, train, test, heldout_size, split_seed)
    if kind in ("cifar10", "cifar100"):
        train, test = _cifar(kind, arg or os.environ.get("AUTOPRUNE_DATA", "~/.cache/autoprune"))
        return _carve(spec, 10 if kind == "cifar10" else 100, train, test, heldout_size, split_seed)
    if kind in ("imagenet", "folder"):
        if not arg:
            raise UserError(f"{kind} needs a path: --data {kind}:/path/with/train/and/val")
        return _image_folder(spec, Path(arg), heldout_size, split_seed)
    if ":" in spec:
        return _user_data(spec, heldout_size, split_seed)
    raise UserError(f"unknown dataset '{spec}': one of {', '.join(DATASETS)}")


def check_heldout(spec: str, n_train: int, heldout_size: int) -> None:
    """Refuse a held-out split that leaves less than one calibration batch of training images."""
    most = n_train - CALIB_BATCH
    if heldout_size < 1:
        raise UserError(f"--heldout must be at least 1, got {heldout_size}")
    if most < 1:
        raise UserError(f"the training set of {spec} has {n_train} images: at least {CALIB_BATCH + 1} are needed "
                        f"(a held-out split plus one BN-calibration batch of {CALIB_BATCH})")
    if heldout_size > most:
        raise UserError(f"the training set of {spec} has {n_train} images: too few for a held-out split of "
                        f"{heldout_size} plus one BN-calibration batch of {CALIB_BATCH}; pass --heldout {most} or less")


def _carve(name: str, num_classes: int, train: TensorSplit, test: TensorSplit, heldout_size: int,
           seed: int) -> DataBundle:
    check_heldout(name, len(train), heldout_size)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    held, rest = perm[:heldout_size].sort().values, perm[heldout_size:].sort().values
    c, h, w = train.images.shape[1:]
    return DataBundle(name, num_classes, c, (h, w), train.subset(rest), train.subset(held), test)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist(root: str | None) -> tuple[TensorSplit, TensorSplit]:
    """Debian's files (or ROOT, or ROOT/FashionMNIST/raw); downloaded with torchvision as a last resort."""
    candidates = [Path(root).expanduser()] if root else [Path(p) for p in FASHION_MNIST_DIRS]
    cache = Path(root).expanduser() if root else Path(os.environ.get("AUTOPRUNE_DATA", "~/.cache/autoprune")).expanduser()
    candidates.append(cache / "FashionMNIST" / "raw")
    found = next((d for d in candidates if (d / "train-images-idx3-ubyte.gz").exists()), None)
    if found is None and not (root and not Path(root).expanduser().exists()):
        found = _download_fashion_mnist(cache)
    if found is None:
        where = root or FASHION_MNIST_DIRS[0]
        raise UserError(f"Fashion-MNIST not found in {where}: `apt-get install -y dataset-fashion-mnist` "
                        "or pass --data fashion-mnist:ROOT")

    def split(prefix: str) -> TensorSplit:
        x = torch.from_numpy(_read_idx(found / f"{prefix}-images-idx3-ubyte.gz").copy()).float().div_(255)
        y = torch.from_numpy(_read_idx(found / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
        return TensorSplit(((x - FASHION_MEAN) / FASHION_STD).unsqueeze(1), y)

    return split("train"), split("t10k")


def _download_fashion_mnist(root: Path) -> Path | None:
    import torchvision

    try:
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # offline: any network error
        log.info("Fashion-MNIST download failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return None
    raw = root / "FashionMNIST" / "raw"
    return raw if (raw / "train-images-idx3-ubyte.gz").exists() else None


def _cifar(kind: str, root: str) -> tuple[TensorSplit, TensorSplit]:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_STATS[kind])
    out = []
    for train in (True, False):
        try:
            ds = cls(str(Path(root).expanduser()), train=train, download=False)
        except RuntimeError:
            try:  # not on disk: torchvision downloads it when this machine is online
                ds = cls(str(Path(root).expanduser()), train=train, download=True)
            except Exception as exc:
                raise UserError(f"{kind} not found under {root} and could not be downloaded "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                f"pass --data {kind}:ROOT") from None
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255)
        out.append(TensorSplit((x - mean) / std, torch.tensor(ds.targets)))
    return out[0], out[1]


def _image_folder(spec: str, root: Path, heldout_size: int, seed: int) -> DataBundle:
    from torchvision import datasets, transforms

    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise UserError(f"data directory {root / part} not found (expected {root}/train and {root}/val)")
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])
    train_aug = datasets.ImageFolder(str(root / "train"), train_tf)
    train_eval = datasets.ImageFolder(str(root / "train"), eval_tf)
    test = datasets.ImageFolder(str(root / "val"), eval_tf)
    check_heldout(spec, len(train_aug), heldout_size)
    perm = torch.randperm(len(train_aug), generator=torch.Generator().manual_seed(seed))
    held, rest = perm[:heldout_size].tolist(), perm[heldout_size:].tolist()
    return DataBundle(spec, len(train_aug.classes), 3, (224, 224), Subset(train_aug, rest),
                      Subset(train_eval, held), test, augment=False)


def _user_data(spec: str, heldout_size: int, seed: int) -> DataBundle:
    factory = import_factory(spec, "dataset")
    try:
        made = factory()
    except Exception as exc:  # the user's own code: any failure, one line
        raise UserError(f"dataset factory '{spec}' failed: {one_line(exc)}") from exc
    extras = {}
    if isinstance(made, dict):  # train/test/num_classes plus how to score and feed a non-classifier
        unknown = sorted(set(made) - {"train", "test", "num_classes", *USER_DATA_EXTRAS})
        if unknown or "train" not in made:
            raise UserError(f"dataset factory '{spec}' returned a dict with "
                            f"{'unknown key ' + unknown[0] if unknown else 'no train'}: keys train, test, num_classes, "
                            f"{', '.join(USER_DATA_EXTRAS)}")
        made, extras = (made["train"], made.get("test"), made.get("num_classes", 0)), \
            {k: made[k] for k in USER_DATA_EXTRAS if made.get(k) is not None}
    try:
        train, test, num_classes = made
    except (TypeError, ValueError):
        raise UserError(f"dataset factory '{spec}' must return (train, test, num_classes) or a dict, "
                        f"not {type(made).__name__}") from None
    if isinstance(train, TensorSplit) and isinstance(test, TensorSplit) and not extras:
        return _carve(spec, num_classes, train, test, heldout_size, seed)
    if "evaluate" in extras:  # the user's function scores: no held-out split is carved
        rest, held = train, None
    else:
        rest, held = carve_heldout(spec, train, heldout_size, seed)
    x0 = train[0][0]
    return DataBundle(spec, num_classes, x0.shape[0], tuple(x0.shape[1:]), rest, held, test, augment=False, **extras)


USER_DATA_EXTRAS = ("evaluate", "example_inputs", "batch_to_inputs")


def carve_heldout(name: str, train: Dataset, heldout_size: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(the rest of `train`, a held-out split of `heldout_size`) drawn by `seed`, for any Dataset."""
    check_heldout(name, len(train), heldout_size)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return Subset(train, perm[heldout_size:].tolist()), Subset(train, perm[:heldout_size].tolist())


def batches(ds: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
            drop_last: bool = False):
    """Yield (x, y) batches: slicing for tensor splits (no DataLoader overhead), else a DataLoader."""
    if isinstance(ds, TensorSplit):
        n = len(ds)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            if order is None:
                yield ds.images[i:i + batch_size], ds.labels[i:i + batch_size]
            else:
                idx = order[i:i + batch_size]
                yield ds.images[idx], ds.labels[idx]
        return
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    yield from DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, drop_last=drop_last,
                          num_workers=min(8, os.cpu_count() or 1))
