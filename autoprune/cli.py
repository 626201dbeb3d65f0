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
from rich.markup import escape

from autoprune.agents import DEFAULT_AGENT  # a light module: names only, searchers load on use
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



BudgetOpt = Annotated[list[str], typer.Option(
    "--budget", help="Budget, repeatable (all must hold): 50%FLOPs, 2.1GFLOPs, 600MFLOPs, 60%params, 1.5Mparams, "
    "12ms, 60%latency. FLOPs are multiply-accumulates, as Torch-Pruning counts them; latency is predicted by "
    "a lookup table profiled on --device at --batch/--threads (cached; see `autoprune profile`).")]
BatchOpt = Annotated[int, typer.Option("--batch", help="Batch size at which latency is measured and budgeted.")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", help="CPU threads latency is measured with. Default: torch's (all cores unless OMP_NUM_THREADS).")]


@app.command()
def search(
    model: Annotated[str, typer.Argument(help="Model name (see `autoprune models`) or package.module:factory.")],
    budget: BudgetOpt = [],  # noqa: B006 - typer needs a list default
    data: DataOpt = "fashion-mnist",
    weights: WeightsOpt = None,
    agent: Annotated[str, typer.Option(help="Searcher: Optuna's tpe (default), cmaes, qmc, optuna:random, "
                                       "nsga2; random (EagleEye), uniform, global, ddpg (AMC), sb3:td3, "
                                       "sb3:sac, sb3:ppo, gnn (GNN-RL), evolution, metapruning; see `autoprune "
                                       "agents`.")] = DEFAULT_AGENT,
    evals: Annotated[int | None, typer.Option(help="Evaluations (candidates scored). Default: the agent's "
                                              "(random and Optuna samplers 60, nsga2 100, uniform/global 1, "
                                              "ddpg/sb3/gnn 300, evolution 1000, metapruning 5: the "
                                              "finalists re-scored with pretrained weights); "
                                              "for ddpg/sb3/gnn one evaluation is one episode.")] = None,
    seed: SeedOpt = 0,
    out: Annotated[Path | None, typer.Option(help="Run folder (must be new unless --resume). "
                                             "Default runs/MODEL-AGENT-sSEED-TIME.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL for the results (e.g. "
                                                "postgresql://...). Default: sqlite file OUT/study.db.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out: stored evaluations are reused.")] = False,
    device: DeviceOpt = "auto",
    space: Annotated[str, typer.Option(help="channel (structured, physically removed) or unstructured "
                                       "(per-layer weight sparsity).")] = "channel",
    max_ratio: Annotated[float, typer.Option(help="Largest prune ratio of any one group.")] = 0.8,
    round_to: Annotated[int | None, typer.Option(help="Round kept channels to a multiple of this. Default auto: "
                                                 "per group the largest of 8/4/2/1 leaving >= 32 choices.")] = None,
    criterion: Annotated[str, typer.Option(help="Which channels go: l2 (Torch-Pruning's default magnitude), l1, "
                                           "bn-scale, lamp, fpgm, random; or from 4x64 training images, once per "
                                           "run: taylor, hessian (OBD), activation.")] = "l2",
    heldout: HeldoutOpt = 5000,
    calib_batches: Annotated[int, typer.Option(help="Training batches (64 images) for BN recalibration.")] = 20,
    ignore: Annotated[list[str], typer.Option(help="Module name never to prune (repeatable); the classifier "
                                              "is always kept, the stem unless --prune-stem.")] = [],  # noqa: B006
    prune_stem: Annotated[bool, typer.Option(help="Let the first layer's output channels be pruned. In a ResNet "
                                             "they are coupled with every stage-1 residual add, which the "
                                             "default leaves whole. Same as --stem-max-ratio MAX_RATIO.")] = False,
    stem_max_ratio: Annotated[float, typer.Option(help="Let the stem's group be pruned up to this ratio (0: "
                                                  "left whole).")] = 0.0,
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tune the best policy for N epochs afterwards.")] = 0,
    distill: Annotated[bool, typer.Option(help="Fine-tune with the unpruned model as teacher (KL on logits, "
                                          "T=4, plus cross-entropy).")] = False,
    finetune_start: Annotated[str, typer.Option(help="The fine-tune starts from the refitted pruned model (refit) "
                                                "or from the kept channels' own weights (plain).")] = "refit",
    reconstruct: Annotated[bool | None, typer.Option(
        "--reconstruct/--no-reconstruct", help="Refit the pruned layers by least squares to the unpruned model's "
        "outputs on 256 calibration images. Default: on wherever it applies (channel space, image-tensor "
        "inputs).")] = None,
    reconstruct_top: Annotated[int, typer.Option(help="With --reconstruct: refit and re-rank the K best after the "
                                                 "search (K more evaluations, each ~2x one without refit); 0 "
                                                 "refits every candidate (a search ~1.4-1.6x slower).")] = 10,
    fidelity: Annotated[str, typer.Option(help="full; auto: score each candidate on 2 BN batches and a fifth "
                                          "of the held-out images first, and finish only those whose 99.9% "
                                          "upper bound could still beat the best so far; ladder: that cheap "
                                          "score, then the full one, then a short fine-tune, each rung keeping "
                                          "the top 1/--ladder-eta (successive halving).")] = "full",
    ladder_steps: Annotated[int, typer.Option(help="--fidelity ladder: SGD steps (batch 128, cosine from lr 0.01) "
                                              "of the top rung's fine-tune; 0: no fine-tune rung, the full score is the top.")] = 50,
    ladder_eta: Annotated[int, typer.Option(help="--fidelity ladder: keep the top 1/ETA at each rung.")] = 3,
    ladder_distill: Annotated[bool, typer.Option(help="--fidelity ladder: the fine-tune distils from the unpruned "
                                                 "model.")] = False,
    workers: Annotated[int, typer.Option(help="Evaluate candidates in parallel on N Ray actors, each with its own "
                                         "model copy (random and the Optuna samplers propose in batches).")] = 1,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster for --workers (default: a local Ray "
                                                    "with this machine's cores).")] = None,
    batch: BatchOpt = 1,
    threads: ThreadsOpt = None,
    latency_table: Annotated[Path | None, typer.Option(help="Latency table file to use (made by `autoprune "
                                                       "profile --out`). Default: the cache for this model "
                                                       "and device, profiled first if missing.")] = None,
    verify_latency: Annotated[int, typer.Option(help="With a latency budget: after the search, time up to N of "
                                                "the best candidates on this machine and keep the first whose "
                                                "measured latency meets the budget (0: trust the table); if none "
                                                "does, up to N more that the table puts furthest under it.")] = 10,
    accept_unverified: Annotated[bool, typer.Option(help="With a latency budget: exit 0 even when no checked "
                                                    "candidate measured within it (default: exit code 3; "
                                                    "policy.json is written either way, \"verified\": false).")] = False,
    agent_option: Annotated[list[str], typer.Option(help="KEY=VALUE, repeatable: a hyper-parameter of the agent "
                                                    "(e.g. population=20 for evolution/metapruning, rollout=32 "
                                                    "for gnn, warmup_episodes=50 for ddpg); an unknown KEY lists "
                                                    "the agent's.")] = [],  # noqa: B006
    reward: Annotated[str | None, typer.Option(help="Reward the RL agents (ddpg, sb3:*, gnn) learn from: "
                                               "error-log-flops (their default, AMC's -Error*log(FLOPs)), "
                                               "error-log-params or accuracy.")] = None,
    init_from: Annotated[Path | None, typer.Option(help="gnn: start from the policy trained by another run (its "
                                                   "folder or gnn_policy.pt), on this or any other network.")] = None,
    pruningnet_epochs: Annotated[int | None, typer.Option(help="metapruning: epochs to train its PruningNet on "
                                                          "the training split (default 2; checkpointed every "
                                                          "epoch, --resume continues).")] = None,
    pruningnet: Annotated[Path | None, typer.Option(help="metapruning: reuse this trained PruningNet (a run's "
                                                    "pruningnet.pt, same model) instead of training one.")] = None,
    reprofile: Annotated[bool, typer.Option(help="Profile the latency table afresh. Without it the cached table is "
                                            "checked first: if the unpruned model measures more than 15% off the "
                                            "table's base latency, predictions are rescaled by the ratio (one "
                                            "line says so).")] = False,
) -> None:
    """Search per-group prune ratios that keep the most held-out accuracy within the budget(s)."""
    from autoprune.zoo import check_weights

    check_weights(model, data, weights)  # no trained weights: one line before the engine's imports (seconds)
    from autoprune import agents as registry
    from autoprune.search_job import SearchConfig
    from autoprune.ui import run_search_with_progress

    agent = registry.resolve(agent)  # a name, package.module:Class or file.py:Class; else one line
    options = registry.parse_options(agent, list(agent_option))

    cfg = SearchConfig(model=model, budgets=list(budget), data=data, weights=weights, agent=agent, evals=evals,
                       seed=seed, out=out, storage=storage, resume=resume, device=device, space=space,
                       max_ratio=max_ratio, round_to=round_to, criterion=criterion, heldout=heldout,
                       calib_batches=calib_batches, finetune_epochs=finetune_epochs, distill=distill,
                       finetune_start=finetune_start, reconstruct=reconstruct, reconstruct_top=reconstruct_top,
                       fidelity=fidelity,
                       ladder_steps=ladder_steps, ladder_eta=ladder_eta, ladder_distill=ladder_distill,
                       ignore=list(ignore),
                       prune_stem=prune_stem, stem_max_ratio=stem_max_ratio,
                       workers=workers, ray_address=ray_address, batch=batch, threads=threads,
                       latency_table=latency_table, verify_latency=verify_latency,
                       accept_unverified=accept_unverified, reprofile=reprofile, reward=reward,
                       init_from=init_from, pruningnet_epochs=pruningnet_epochs, pruningnet=pruningnet,
                       agent_options=options)
    summary = run_search_with_progress(cfg, console)
    check = summary.get("latency_verification")
    if check is not None and not check["verified"] and not accept_unverified:
        from autoprune.verify import UNVERIFIED_EXIT

        console.print(f"[red]error:[/red] no checked candidate measured within the latency budget "
                      f"({len(check['checked'])} timed, the closest at "
                      f"{min(c['measured_fraction'] for c in check['checked']):.1%} of the unpruned model): the policy is kept unverified in {escape(summary['files']['policy'])}; "
                      "pass --accept-unverified to exit 0", highlight=False, soft_wrap=True)
        raise typer.Exit(UNVERIFIED_EXIT)


@app.command()
def profile(
    model: Annotated[str, typer.Argument(help="Model name (see `autoprune models`) or package.module:factory.")],
    device: DeviceOpt = "auto",
    batch: BatchOpt = 1,
    threads: ThreadsOpt = None,
    data: DataOpt = "fashion-mnist",
    weights: WeightsOpt = None,
    input_shape: Annotated[str | None, typer.Option(help="CxHxW input (e.g. 3x224x224) instead of the "
                                                    "dataset's; no data is loaded then.")] = None,
    classes: Annotated[int, typer.Option(help="Classes of the model with --input-shape.")] = 1000,
    out: Annotated[Path | None, typer.Option(help="Table file. Default: the cache searches read "
                                             "($AUTOPRUNE_LATENCY_DIR or ~/.cache/autoprune/latency).")] = None,
    grid: Annotated[int, typer.Option(help="Timed channel counts per prunable axis of each layer shape.")] = 8,
    repeats: Annotated[int, typer.Option(help="Timed runs per grid point (median).")] = 25,
    calibration: Annotated[int, typer.Option(help="Random pruned models timed whole to calibrate the "
                                             "table.")] = 8,
    force: Annotated[bool, typer.Option(help="Profile afresh even if the table exists.")] = False,
) -> None:
    """Profile a latency lookup table of MODEL on this device (resumable); searches with a latency budget reuse it."""
    from autoprune.cost.profile import ProfileSettings
    from autoprune.ui import profile_with_progress
    from autoprune.workflows import profile_model

    settings = ProfileSettings(device=device, batch=batch, threads=threads, grid=grid, repeats=repeats,
                               calibration=calibration)
    result = profile_with_progress(console, lambda on_progress: profile_model(
        model, settings, data=data, weights=weights, input_shape=input_shape, classes=classes, out=out,
        force=force, on_progress=on_progress))
    for key, value in result.items():
        typer.echo(f"{key}: {value}")


@app.command()
def apply(
    policy: Annotated[Path, typer.Argument(help="policy.json written by `autoprune search`.")],
    out: Annotated[Path, typer.Option(help="Where to write the pruned model (torch.save of the module).")],
    weights: WeightsOpt = None,
    data: Annotated[str | None, typer.Option(help="Dataset for BN recalibration; default: the policy's.")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Rebuild the physically pruned model from a policy file and its base model."""
    from autoprune.rebuild import load_run_model

    if out.exists():
        raise UserError(f"{out} already exists: choose another --out")
    loaded = load_run_model(policy, weights=weights, data=data, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    torch.save(loaded.pruned.cpu(), out)
    console.print(f"wrote {out}")


@app.command()
def export(
    policy: Annotated[Path, typer.Argument(help="policy.json written by `autoprune search`.")],
    out: Annotated[Path, typer.Option(help="Folder for nni_config_list.json, nni_masks.pt, "
                                      "tp_pruning_ratio_dict.json and the pruned model (.pt, .onnx).")],
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Write a policy in the formats NNI and Torch-Pruning read, plus the pruned model files."""
    from autoprune.rebuild import load_run_model
    from autoprune.export import write_exports

    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty: choose another --out")
    loaded = load_run_model(policy, weights=weights, device=device)
    out.mkdir(parents=True, exist_ok=True)
    files = write_exports(out, loaded.graph, loaded.policy, loaded.pruned.cpu(), loaded.graph.example(),
                          base=loaded.base)
    for name, path in files.items():
        console.print(f"{name}: {path}")


@app.command()
def finetune(
    run: Annotated[Path, typer.Argument(help="Run folder of `autoprune search` (holds policy.json).")],
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs (cosine LR).")] = 3,
    lr: Annotated[float, typer.Option(help="Starting learning rate.")] = 0.01,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    distill: Annotated[bool, typer.Option(help="Distil from the unpruned model: (1-w) cross-entropy + w T^2 "
                                          "KL(teacher || student) on logits softened by T.")] = False,
    temperature: Annotated[float, typer.Option(help="Distillation temperature T.")] = 4.0,
    distill_weight: Annotated[float, typer.Option(help="Distillation weight w in [0, 1].")] = 0.5,
    start: Annotated[str, typer.Option(help="Start from the refitted pruned model (refit: pruned.pt) or from the "
                                       "kept channels' own weights (plain), for a run that refitted.")] = "refit",
    device: DeviceOpt = "auto",
) -> None:
    """Fine-tune a search's pruned model on the training split; reports test accuracy before/after."""
    from autoprune.finetune import finetune_run

    if not (run / "policy.json").exists():
        raise UserError(f"{run} is not a run folder (no policy.json)")
    result = finetune_run(run, epochs, lr=lr, batch_size=batch_size, device=device, distill=distill,
                          temperature=temperature, distill_weight=distill_weight, start=start,
                          on_epoch=lambda e, row: console.print(
        f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.4f}, held-out {row['heldout_accuracy']:.4f}"))
    console.print(f"test accuracy {result['test_accuracy_before_finetune']:.4f} -> "
                  f"{result['finetuned_test_accuracy']:.4f}; wrote {run / 'finetuned.pt'}")


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="Model name, or a policy.json to evaluate its pruned model.")],
    data: DataOpt = "fashion-mnist",
    weights: WeightsOpt = None,
    heldout: HeldoutOpt = 5000,
    device: DeviceOpt = "auto",
) -> None:
    """Held-out and test accuracy, MACs and params of a model (or of a policy's pruned model)."""
    from autoprune.workflows import evaluate_model

    row = evaluate_model(model, data=data, weights=weights, heldout=heldout, device=device)
    for key, value in row.items():
        typer.echo(f"{key}: {value}")


@app.command()
def models() -> None:
    """List model names: the project's small-input nets and every torchvision classifier."""
    from autoprune.zoo import list_models, shipped_weights

    for name, desc in list_models():
        shipped = " [shipped weights: fashion-mnist]" if shipped_weights(name, "fashion-mnist") else ""
        typer.echo(f"{name:24s} {desc}{shipped}")


@app.command()
def datasets() -> None:
    """List dataset specs accepted by --data."""
    from autoprune.data import DATASETS

    for name, desc in DATASETS.items():
        typer.echo(f"{name:24s} {desc}")


@app.command("agents")
def list_agents() -> None:
    """List the registered searchers."""
    from autoprune.agents import REGISTRY

    for name, (_, _, desc) in REGISTRY.items():
        typer.echo(f"{name:12s} {desc}{' (default)' if name == DEFAULT_AGENT else ''}")


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP.yaml", help="Sweep file: models, budgets, agents, "
                                               "seeds, evals and shared search options (see docs/sweeps.md).")],
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster: auto (run on one of its nodes) or "
                                                "HOST:PORT. Default: a local Ray with this machine's cores.")] = None,
    out: Annotated[Path | None, typer.Option(help="Sweep folder (must be new unless --resume). "
                                             "Default sweeps/NAME, NAME the sweep file's stem.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the sweep in --out: finished trials are kept, "
                                         "failed and unfinished ones run again.")] = False,
) -> None:
    """Run one search per (model, budget, agent, seed) as a Ray Tune experiment; compare them in a table."""
    from autoprune.tune import load_sweep, run_sweep
    from autoprune.ui import sweep_tables

    spec = load_sweep(sweep_file)
    out = out or Path("sweeps") / sweep_file.stem
    results = run_sweep(spec, out, spec_text=sweep_file.read_text(), resume=resume, address=address)
    for part in sweep_tables(results):
        console.print(part)
    console.print(f"wrote {out / 'sweep_results.md'}, {out / 'sweep_results.json'}; policies in {out / 'runs'}")
    if results["failed"]:
        console.print(f"[red]{results['failed']} of {results['trials']} trials failed or did not run[/red] "
                      "(error column); --resume runs them again")
        raise typer.Exit(1)


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="Run folder of `autoprune search` (policy.json and its study) or "
                                         "sweep folder of `autoprune sweep` (sweep_results.json, runs/).")],
    out: Annotated[Path | None, typer.Option(help="Where to write the page. Default: PATH/report.html.")] = None,
) -> None:
    """Write report.html of a run or sweep: summary table and plots in one page that opens offline."""
    from autoprune.report import write_report

    typer.echo(str(write_report(path, out)))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except UserError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C: what was stored (and how to --resume) is logged just before
        console.print("[red]interrupted[/red]", highlight=False)
        sys.exit(130)
