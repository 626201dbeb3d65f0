"""The `autoprune` command line: parses options into config objects and calls the library.

Bad input (a `UserError` from anywhere below) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from autoprune.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search layer-wise pruning ratios for trained CNNs under FLOPs/params budgets.")
console = Console(stderr=True)

DataOpt = Annotated[str, typer.Option("--data", help="Dataset: fashion-mnist, cifar10[:ROOT], cifar100[:ROOT], "
                                      "imagenet:PATH, folder:PATH or package.module:factory.")]
WeightsOpt = Annotated[str | None, typer.Option(
    "--weights", help="Checkpoint file, torchvision weights name (e.g. IMAGENET1K_V2, downloaded only then), "
    "or 'random'. Default: the weights shipped for this model and dataset.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA if present), cpu, cuda or cuda:N.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Root seed: same seed, same result.")]


@app.callback()
def _root() -> None:
    """autoprune: layer-wise pruning-ratio search (AMC, GNN-RL, MetaPruning, Optuna, baselines)."""


HeldoutOpt = Annotated[int, typer.Option("--heldout", help="Images carved from the training set to score candidates.")]


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="Model name (see `autoprune models`) or package.module:factory.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the weights (.pt) and model card (.json/.md).")],
    data: DataOpt = "fashion-mnist",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 12,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the one-cycle schedule.")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = 5e-4,
    seed: SeedOpt = 0,
    heldout: HeldoutOpt = 5000,
    device: DeviceOpt = "auto",
) -> None:
    """Train a model on the training split (held-out split excluded) and write weights + model card."""
    from autoprune import workflows
    from autoprune.train import TrainConfig

    if out.exists():
        raise UserError(f"{out} already exists: choose another --out")
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed)
    card = workflows.train_model(model, data, cfg, out, heldout_size=heldout, device=device,
                                 on_epoch=lambda e, row: console.print(
                                     f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.4f}, "
                                     f"held-out {row['heldout_accuracy']:.4f}, {row['seconds']:.0f}s"))
    console.print(f"test accuracy {card['test_accuracy']:.4f}; wrote {out} and its model card")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
