"""From a config to a built problem: the run's settings (`SearchConfig`), their checks, and `build_setup`.

Every refusal of bad input happens here, before anything is written: unknown names, weights that do
not exist for the data, budgets the space cannot meet, options the model or searcher cannot take.
Ray workers call `build_setup` with the driver's config to rebuild the same problem.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from autoprune import agents
from autoprune.budget import budget_metric, parse_budget
from autoprune.cost import analytic_cost_models
from autoprune.data import DataBundle, load_data
from autoprune.device import resolve_device
from autoprune.errors import UserError
from autoprune.evaluate import Evaluator, FunctionEvaluator
from autoprune.finetune import FINETUNE_STARTS
from autoprune.graph import build_graph
from autoprune.importance import CRITERIA, DATA_CRITERIA
from autoprune.policy import Policy
from autoprune.problem import Problem, reward_function
from autoprune.zoo import ModelBundle, build_model, check_weights


@dataclass
class SearchConfig:
    model: str
    budgets: list[str]
    data: str = "fashion-mnist"
    weights: str | None = None
    agent: str = agents.DEFAULT_AGENT
    evals: int | None = None  # None: the agent's default
    seed: int = 0
    out: Path | None = None
    storage: str | None = None  # SQLAlchemy URL; default sqlite in the run folder
    resume: bool = False
    device: str = "auto"
    space: str = "channel"
    max_ratio: float = 0.8
    round_to: int | None = None
    criterion: str = "l2"  # Torch-Pruning's default; L1 lost ~20 points on ResNet-20 here (bench/results)
    heldout: int = 5000
    calib_batches: int = 20
    finetune_epochs: int = 0
    distill: bool = False  # fine-tune with the unpruned model as teacher
    finetune_start: str = "refit"  # the fine-tune's starting weights: "refit" or "plain" (autoprune.finetune)
    # Least-squares refit of the pruned layers (autoprune.reconstruct). None: on wherever it applies (channel
    # space, image-tensor inputs); it lifted ResNet-20 at 50% FLOPs from 86.3 to 91.9% test (tpe, 60 evaluations,
    # bench/results/engine_settings-50pctFLOPs-60evals.md). True: on, refused where it cannot apply.
    reconstruct: bool | None = None
    # K: refit and re-rank the K best after the search; 0: refit every candidate. Measured at 60 evaluations,
    # 50% FLOPs: top-10 tested as well as every-candidate (ResNet-20 91.88 vs 91.83%) at ~70% of its time.
    reconstruct_top: int = 10
    # "auto": stop hopeless candidates after a low-fidelity first stage; "ladder": successive halving from that
    # stage through the full score to a short fine-tune (autoprune.ladder)
    fidelity: str = "full"
    # The ladder's top rung: SGD steps of fine-tuning on the training split (0: none). 50 ranked the 1-epoch
    # fine-tuned accuracy as well as 200 at a quarter of the cost (bench/results/ladder_fidelity-*).
    ladder_steps: int = 50
    ladder_eta: int = 3  # the ladder keeps the top 1/eta of each rung
    ladder_distill: bool = False  # the ladder's fine-tune distils from the unpruned model
    ignore: list[str] = field(default_factory=list)
    # The stem's outputs share a group with every residual add they feed (stage 1 of a ResNet): excluding the
    # stem freezes that whole group. Off by default: at 50% FLOPs it gains ResNet-20 ~5 pp but costs ResNet-56
    # 3-9 pp (README, Benchmarks).
    prune_stem: bool = False
    # The stem's group with a cap of its own (0: left whole, the default; --prune-stem: capped by max_ratio).
    stem_max_ratio: float = 0.0
    agent_options: dict = field(default_factory=dict)
    workers: int = 1  # >1: evaluate candidates in parallel on Ray actors (batching searchers only)
    ray_address: str | None = None  # join this Ray cluster for the workers; default a local Ray
    batch: int = 1  # batch size at which latency counts (budgets, reported latency)
    threads: int | None = None  # CPU threads latency is measured with; None: torch's setting
    latency_table: Path | None = None  # a profiled table to use; default the cache for this model and device
    verify_latency: int = 10  # latency budgets: time up to N best candidates, keep the first that meets them
    accept_unverified: bool = False  # latency budgets: a run whose measured check fails still succeeds (exit 0)
    reprofile: bool = False  # profile the latency table afresh instead of using (and checking) the cached one
    reward: str | None = None  # the RL agents' reward (autoprune.problem.REWARDS); None: each agent's default
    init_from: Path | None = None  # gnn: warm-start from this run folder's (or file's) trained policy
    pruningnet_epochs: int | None = None  # metapruning: PruningNet training epochs (None: the agent's default)
    pruningnet: Path | None = None  # metapruning: reuse this trained PruningNet instead of training one

    def n_evals(self) -> int:
        return self.evals if self.evals is not None else agents.default_evals(self.agent)

    def stem_cap(self) -> float:
        """The stem group's largest prune ratio: --stem-max-ratio, or --max-ratio with --prune-stem, else 0."""
        return self.stem_max_ratio or (self.max_ratio if self.prune_stem else 0.0)


@dataclass
class Setup:
    """Everything built from a config, before any file is written."""

    config: SearchConfig
    data: DataBundle
    bundle: ModelBundle
    problem: Problem
    searcher: agents.Searcher
    device: torch.device
    inputs: Inputs | None = None  # the Python API's objects (Ray workers get them too)
    policy: Policy | None = None  # the returned policy and its pruned model, once the search has run
    pruned: torch.nn.Module | None = None


def check_config(cfg: SearchConfig) -> None:
    """The config's own refusals, before anything is loaded."""
    cfg.agent = agents.resolve(cfg.agent)  # a user's file.py:Class by its absolute path, for workers and --resume
    if cfg.criterion not in CRITERIA:
        raise UserError(f"unknown importance criterion '{cfg.criterion}': one of {', '.join(CRITERIA)}")
    if cfg.space == "unstructured" and cfg.criterion in DATA_CRITERIA:
        raise UserError(f"--criterion {cfg.criterion} ranks channel groups; the unstructured space prunes weights "
                        "by magnitude (l1, l2 or random)")
    if not 0.0 <= cfg.stem_max_ratio < 1.0:
        raise UserError(f"--stem-max-ratio must lie in [0, 1), got {cfg.stem_max_ratio}")
    if not cfg.budgets:
        raise UserError("give at least one --budget, e.g. --budget 50%FLOPs")
    if cfg.n_evals() < 1:
        raise UserError("--evals must be at least 1")
    if cfg.workers < 1:
        raise UserError("--workers must be at least 1")
    if cfg.batch < 1 or (cfg.threads is not None and cfg.threads < 1):
        raise UserError("--batch and --threads must be at least 1")
    if cfg.finetune_start not in FINETUNE_STARTS:
        raise UserError(f"--finetune-start must be one of {', '.join(FINETUNE_STARTS)}, got '{cfg.finetune_start}'")


@dataclass
class Inputs:
    """A model and data given as Python objects (autoprune.api) instead of names in the config."""

    bundle: ModelBundle
    data: DataBundle


def build_setup(cfg: SearchConfig, *, on_profile: Callable[[str, int, int], None] | None = None,
                inputs: Inputs | None = None, on_stage: Callable[[str], None] | None = None) -> Setup:
    """Load data and model, analyse the graph, parse budgets: every check that can refuse input.

    A latency budget also brings the latency cost model: the cached table of this model on this
    device, profiled first (minutes, reported through `on_profile`) when there is none yet.
    `inputs` replaces the config's model and data names with objects (the Python API). `on_stage`
    hears what is being analysed (the graph's stages, with elapsed time); default: the log.
    """
    check_config(cfg)
    device = resolve_device(cfg.device)
    data, bundle = _load(cfg, inputs)
    input_shape = (data.in_channels, *data.input_size)
    graph = build_graph(bundle.model, input_shape, model_id=cfg.model, ignore=cfg.ignore,
                        prune_stem=cfg.stem_cap() > 0, example_inputs=data.example_inputs,
                        deepest=max(cfg.max_ratio, cfg.stem_cap()), progress=on_stage)
    check_inputs_support(cfg, graph, data, bundle.model)
    cfg.reconstruct = refit_applies(cfg, graph, data) if cfg.reconstruct is None else cfg.reconstruct
    space = _space(cfg, graph, bundle.model)
    common = dict(calib_batches=cfg.calib_batches, seed=cfg.seed, to_inputs=data.batch_to_inputs)
    if data.evaluate is not None:  # the user's evaluate(model) replaces held-out top-1
        evaluator = FunctionEvaluator(data.train, data.evaluate, device, **common)
    else:
        evaluator = Evaluator(data.train, data.heldout, device, **common)
    cost_models, base = _cost_models(cfg, space, graph, bundle.model, device, on_profile)
    budgets = [parse_budget(b, base) for b in cfg.budgets]
    if cfg.reconstruct_top < 0:
        raise UserError("--reconstruct-top must be 0 (every candidate) or a positive count")
    fidelity, ladder = fidelity_of(cfg, evaluator, graph, data)
    problem = Problem(bundle.model, space, budgets, evaluator, criterion=cfg.criterion, cost_models=cost_models,
                      seed=cfg.seed, train=data.train, fidelity=fidelity, ladder=ladder,
                      # every candidate refitted; else only the top K after the search (the ladder refits at rung 1)
                      reconstruct=bool(cfg.reconstruct and (not cfg.reconstruct_top or cfg.fidelity == "ladder")))
    searcher = _searcher(cfg, problem)
    return Setup(cfg, data, bundle, problem, searcher, device, inputs)


def _load(cfg: SearchConfig, inputs: Inputs | None) -> tuple[DataBundle, ModelBundle]:
    """The data and model the config names (or the Python API's objects)."""
    if inputs is not None:
        return inputs.data, inputs.bundle
    check_weights(cfg.model, cfg.data, cfg.weights)  # no trained weights for this model and data: refused first
    data = load_data(cfg.data, heldout_size=cfg.heldout)
    bundle = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels,
                         dataset=data.name, weights=cfg.weights, seed=cfg.seed)
    return data.with_channels(bundle.in_channels), bundle


def _cost_models(cfg: SearchConfig, space, graph, model: torch.nn.Module, device: torch.device,
                 on_profile) -> tuple[dict, dict[str, float]]:
    """(cost model per metric, the unpruned model's cost per metric): MACs and params always, latency
    (a profiled table, minutes the first time) only when a budget asks for it."""
    base = {"macs": graph.base_macs, "params": graph.base_params}
    cost_models = analytic_cost_models(space)
    if "latency_ms" in [budget_metric(b) for b in cfg.budgets]:
        from autoprune.cost.profile import ProfileSettings, latency_cost_model
        from autoprune.cost.staleness import check_table

        if cfg.threads is None:  # pinned: Ray workers rebuild this setup with fewer threads, same table
            cfg.threads = torch.get_num_threads()
        settings = ProfileSettings(device=str(device), batch=cfg.batch, threads=cfg.threads)
        lut = latency_cost_model(model, space, settings, path=cfg.latency_table, force=cfg.reprofile,
                                 on_progress=on_profile)
        check_table(lut, model, batch=cfg.batch, device=device, threads=cfg.threads)
        cost_models["latency_ms"] = lut
        base["latency_ms"] = lut.cost(np.zeros(space.size))
    return cost_models, base


def _searcher(cfg: SearchConfig, problem: Problem) -> agents.Searcher:
    """The configured searcher, its own refusals asked (Searcher.check_problem), its batch set for workers."""
    searcher = agents.build(cfg.agent, **_agent_options(cfg))
    searcher.check_problem(problem)
    if cfg.workers > 1:
        if not searcher.supports_batch:
            batching = [n for n in agents.names() if agents.searcher_class(n).supports_batch]
            raise UserError(f"agent '{cfg.agent}' evaluates one candidate at a time: --workers > 1 needs one "
                            f"of {', '.join(batching)}")
        searcher.batch = cfg.workers
    return searcher


def refit_applies(cfg: SearchConfig, graph, data: DataBundle) -> bool:
    """Whether the default refit can run: channel space, and the model fed plain image batches."""
    return cfg.space == "channel" and graph.takes_one_tensor and data.batch_to_inputs is None


def fidelity_of(cfg: SearchConfig, evaluator: Evaluator, graph, data: DataBundle):
    """`--fidelity` checked: (full | auto | ladder, the Ladder or None)."""
    if cfg.fidelity not in ("full", "auto", "ladder"):
        raise UserError(f"--fidelity must be full, auto or ladder, not '{cfg.fidelity}'")
    if cfg.fidelity == "full":
        return "full", None
    if isinstance(evaluator, FunctionEvaluator):
        raise UserError(f"--fidelity {cfg.fidelity} scores a slice of the held-out images first: it needs "
                        "held-out data, not an evaluate function")
    if cfg.workers > 1:
        raise UserError(f"--fidelity {cfg.fidelity} decides each candidate against those scored before it, in this "
                        "process: use it with --workers 1")
    if cfg.fidelity == "auto":
        return "auto", None
    from autoprune.ladder import Ladder

    if not graph.takes_one_tensor:
        raise UserError("--fidelity ladder fine-tunes on (image, label) batches: it needs a model fed one "
                        "image tensor")
    try:
        return "ladder", Ladder(eta=cfg.ladder_eta, steps=cfg.ladder_steps, distill=cfg.ladder_distill,
                                seed=cfg.seed, data=data)
    except ValueError as exc:
        raise UserError(f"--ladder-eta / --ladder-steps: {exc}") from None


def logits_or_kind(model: torch.nn.Module, example) -> str | None:
    """None when `model` maps `example` to one (batch, classes) tensor, what top-1 accuracy can score;
    else the kind of output it returns ("OrderedDict", "tuple", "a 4-d tensor")."""
    from autoprune.evaluate import to_device
    from autoprune.probe import call_model, output_kind

    device = next(model.parameters()).device
    with torch.no_grad():
        return output_kind(call_model(model.eval(), to_device(example, device)))


def check_inputs_support(cfg: SearchConfig, graph, data: DataBundle, model: torch.nn.Module) -> None:
    """Refuse, in one line, what a model fed by `example_inputs` / `batch_to_inputs` cannot do."""
    kind = None if data.evaluate is not None else logits_or_kind(model, graph.example())
    if kind is not None:
        raise UserError(f"the model returns {kind}, not (batch, classes) logits: held-out top-1 "
                        "cannot score it; pass your own evaluate function (evaluate= in Python, an 'evaluate' "
                        "entry of a data factory's dict)")
    plain = graph.takes_one_tensor
    if not plain and "latency_ms" in [budget_metric(b) for b in cfg.budgets]:
        raise UserError("latency budgets time the model on one input tensor; with example_inputs that is a "
                        f"{type(data.example_inputs).__name__} use a FLOPs or params budget")
    if cfg.reconstruct and (not plain or data.batch_to_inputs is not None):
        raise UserError("reconstruct refits layers on batches of image tensors; with a non-tensor example_inputs "
                        "or batch_to_inputs it is not supported")
    if cfg.finetune_epochs and (data.evaluate is not None or not plain):
        raise UserError("fine-tuning trains a classifier on (image, label) batches with cross-entropy; a model "
                        "scored by your evaluate function is fine-tuned by your own training code")


def _agent_options(cfg: SearchConfig) -> dict:
    """The searcher's constructor options: the config's, plus --reward and --init-from where the agent takes them."""
    options = dict(cfg.agent_options)
    for flag, key, value in (("--reward", "reward", cfg.reward), ("--init-from", "init_from", cfg.init_from),
                             ("--pruningnet-epochs", "pruningnet_epochs", cfg.pruningnet_epochs),
                             ("--pruningnet", "pruningnet", cfg.pruningnet)):
        if value is None:
            continue
        if not agents.accepts(cfg.agent, key):
            takers = [n for n in agents.names() if agents.accepts(n, key)]
            raise UserError(f"{flag} applies to {', '.join(takers)}, not to agent '{cfg.agent}'")
        options[key] = value
    if cfg.reward is not None:
        reward_function(cfg.reward)  # an unknown name: one line now, not after the run folder is made
    return options


def _space(cfg: SearchConfig, graph, model):
    from autoprune.search_spaces import ChannelSpace, UnstructuredSpace

    try:
        if cfg.space == "channel":
            return ChannelSpace(graph, max_ratio=cfg.max_ratio, round_to=cfg.round_to,
                                stem_max_ratio=cfg.stem_cap() or None)
        if cfg.space == "unstructured":
            return UnstructuredSpace(graph, model, max_ratio=cfg.max_ratio)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    raise UserError(f"unknown search space '{cfg.space}': channel or unstructured")
