"""End-to-end jobs behind the CLI commands (train, search, apply, finetune, evaluate, profile).

Each takes plain values / config objects, so scripts and notebooks get the same behaviour as the CLI.
"""
from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from autoprune.data import load_data
from autoprune.device import resolve_device
from autoprune.evaluate import accuracy
from autoprune.train import TrainConfig, train
from autoprune.zoo import build_model
from autoprune.zoo.cards import save_weights


def _machine(device: torch.device) -> str:
    """What trained it: the GPU's name on CUDA, else the CPU and its thread count."""
    host = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    return f"{torch.cuda.get_device_name(device)} (cuda), host {host}" if device.type == "cuda" else host


def train_model(model_name: str, data_spec: str, cfg: TrainConfig, out: Path, *, heldout_size: int = 5000,
                device: str = "auto", on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    dev = resolve_device(device)
    data = load_data(data_spec, heldout_size=heldout_size)
    bundle = build_model(model_name, num_classes=data.num_classes, in_channels=data.in_channels,
                         dataset=data.name, weights="random")
    data = data.with_channels(bundle.in_channels)
    start = time.perf_counter()
    history = train(bundle.model, data, cfg, dev, on_epoch)
    card = {
        "model": model_name, "dataset": data.name,
        "recipe": f"`autoprune train {model_name} --data {data_spec} --epochs {cfg.epochs} --lr {cfg.lr} "
                  f"--batch-size {cfg.batch_size} --weight-decay {cfg.weight_decay} --seed {cfg.seed} "
                  f"--heldout {heldout_size}`: SGD Nesterov 0.9, one-cycle LR, random crop + flip",
        "seed": cfg.seed, "epochs": cfg.epochs,
        "train_images": len(data.train), "heldout_images": len(data.heldout),
        "heldout_accuracy": accuracy(bundle.model, data.heldout, dev)["top1"],
        "test_accuracy": accuracy(bundle.model, data.test, dev)["top1"],
        "train_seconds": round(time.perf_counter() - start),
        "machine": _machine(dev),
        "history": history,
    }
    save_weights(bundle.model, out, card)
    return card


def evaluate_model(model: str, *, data: str = "fashion-mnist", weights: str | None = None, heldout: int = 5000,
                   device: str = "auto") -> dict:
    """Accuracy and costs of a zoo model, or of the pruned model of a policy.json."""
    from autoprune.rebuild import load_run_model
    from autoprune.graph import build_graph

    dev = resolve_device(device)
    if model.endswith(".json"):
        loaded = load_run_model(Path(model), weights=weights, device=device)
        net, bundle_data = loaded.pruned, loaded.data
    else:
        bundle_data = load_data(data, heldout_size=heldout)
        bundle = build_model(model, num_classes=bundle_data.num_classes, in_channels=bundle_data.in_channels,
                             dataset=bundle_data.name, weights=weights)
        bundle_data = bundle_data.with_channels(bundle.in_channels)
        net = bundle.model
    shape = (bundle_data.in_channels, *bundle_data.input_size)
    graph = build_graph(net, shape)
    return {"heldout_accuracy": accuracy(net.to(dev), bundle_data.heldout, dev)["top1"],
            "test_accuracy": accuracy(net, bundle_data.test, dev)["top1"],
            "macs": graph.base_macs, "params": graph.base_params}


def profile_model(model: str, settings, *, data: str = "fashion-mnist", weights: str | None = None,
                  input_shape: str | None = None, classes: int = 1000, out: Path | None = None,
                  force: bool = False, on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Profile (or finish, or just load) the latency table of a model; returns what the CLI prints.

    The input shape comes from the dataset, or from `input_shape` ("3x224x224") without loading
    any data. Latency does not depend on weight values, so without shipped weights (or --weights)
    the model is initialised at random rather than refused.
    """
    from autoprune.cost.lut import describe_fingerprint
    from autoprune.cost.profile import profile_latency
    from autoprune.errors import UserError
    from autoprune.graph import build_graph
    from autoprune.search_spaces import ChannelSpace
    from autoprune.zoo import SMALL_MODELS, shipped_weights

    if input_shape is not None:
        try:
            shape = tuple(int(d) for d in input_shape.lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) < 2 or min(shape) < 1:
            raise UserError(f"malformed --input-shape '{input_shape}': use CxHxW, e.g. 3x224x224")
        num_classes, in_channels, dataset = classes, shape[0], None
    else:
        bundle_data = load_data(data, heldout_size=1)  # only its shape and classes matter here
        num_classes, in_channels, dataset = bundle_data.num_classes, bundle_data.in_channels, bundle_data.name
        shape = (in_channels, *bundle_data.input_size)
    if weights is None and (model not in SMALL_MODELS or shipped_weights(model, dataset or "") is None):
        weights = "random"
    bundle = build_model(model, num_classes=num_classes, in_channels=in_channels, dataset=dataset, weights=weights)
    shape = (bundle.in_channels, *shape[1:])  # torchvision nets take 3 channels (grey images are repeated)
    graph = build_graph(bundle.model, shape, model_id=model)
    prof = profile_latency(bundle.model, graph, settings, path=out, force=force, on_progress=on_progress)
    t = prof.table
    return {"table": str(prof.path), "device": describe_fingerprint(t.fingerprint), "input": "x".join(map(str, shape)),
            "batch": t.batch, "layer_shapes": len(t.tables), "layers": len(prof.units),
            "base_latency_ms": round(t.base_ms, 4), "floor_latency_ms": round(t.floor_ms(ChannelSpace(graph).min_kept), 4),
            "calibration": "{model}: measured = {a:.4f} x raw + {b:.4f} ms".format(**t.calibration["fit"]),
            "timing_spread": f"{t.stability.get('spread', 0.0):.1%} (unpruned model timed between layer shapes)",
            "profile_seconds": round(t.seconds, 1)}
