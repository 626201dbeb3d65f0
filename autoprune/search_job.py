"""A search job: build the problem from a config, run a searcher on it, report and write results.

Validation (model, data, weights, budgets, agent) happens before anything is written, so bad
input leaves no half-made run folder. A run folder is never reused without `resume=True`; a
resumed run replays its searcher from the seed and takes stored evaluations from the study.
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from autoprune import agents
from autoprune.budget import budget_metric, parse_budget
from autoprune.cost.measured import measure_latency_ms
from autoprune.cost import analytic_cost_models
from autoprune.data import DataBundle, load_data
from autoprune.device import resolve_device
from autoprune.errors import UserError
from autoprune.evaluate import Evaluator, FunctionEvaluator, accuracy
from autoprune.graph import build_graph
from autoprune.importance import CRITERIA, DATA_CRITERIA
from autoprune.policy import Policy
from autoprune.problem import EvalResult, Problem
from autoprune.study import Study, StudyInfo, public_url
from autoprune.outcome import final_pick, policy_details
from autoprune.zoo import ModelBundle, build_model, check_weights

log = logging.getLogger(__name__)

DEFAULT_EVALS = {"random": 60, "uniform": 1, "global": 1, "ddpg": 300, "gnn": 300, "evolution": 1000,
                 "metapruning": 5,
                 "sb3:td3": 300, "sb3:sac": 300, "sb3:ppo": 300,
                 "tpe": 60, "cmaes": 60, "qmc": 60, "optuna:random": 60, "nsga2": 100}


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
        return self.evals if self.evals is not None else DEFAULT_EVALS.get(self.agent, 60)

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


def default_out(cfg: SearchConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model.replace(':', '_').replace('/', '_')}-{cfg.agent}-s{cfg.seed}-{stamp}"


def check_config(cfg: SearchConfig) -> None:
    """The config's own refusals, before anything is loaded."""
    if cfg.agent not in agents.names():
        raise UserError(f"unknown agent '{cfg.agent}': one of {', '.join(agents.names())}")
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
    if inputs is None:  # no trained weights for this model and data: refused before either loads
        check_weights(cfg.model, cfg.data, cfg.weights)
    device = resolve_device(cfg.device)
    if inputs is None:
        data = load_data(cfg.data, heldout_size=cfg.heldout)
        bundle = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels,
                             dataset=data.name, weights=cfg.weights, seed=cfg.seed)
        data = data.with_channels(bundle.in_channels)
    else:
        data, bundle = inputs.data, inputs.bundle
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
    base = {"macs": graph.base_macs, "params": graph.base_params}
    cost_models = analytic_cost_models(space)
    if "latency_ms" in [budget_metric(b) for b in cfg.budgets]:  # profiling costs minutes: only when asked
        from autoprune.cost.profile import ProfileSettings, latency_cost_model

        if cfg.threads is None:  # pinned: Ray workers rebuild this setup with fewer threads, same table
            cfg.threads = torch.get_num_threads()
        settings = ProfileSettings(device=str(device), batch=cfg.batch, threads=cfg.threads)
        from autoprune.cost.staleness import check_table

        lut = latency_cost_model(bundle.model, space, settings, path=cfg.latency_table, force=cfg.reprofile,
                                 on_progress=on_profile)
        check_table(lut, bundle.model, batch=cfg.batch, device=device, threads=cfg.threads)
        cost_models["latency_ms"] = lut
        base["latency_ms"] = lut.cost(np.zeros(space.size))
    budgets = [parse_budget(b, base) for b in cfg.budgets]
    problem = Problem(bundle.model, space, budgets, evaluator, criterion=cfg.criterion,
                      cost_models=cost_models, seed=cfg.seed)
    problem.train = data.train
    if cfg.reconstruct_top < 0:
        raise UserError("--reconstruct-top must be 0 (every candidate) or a positive count")
    if cfg.reconstruct and (not cfg.reconstruct_top or cfg.fidelity == "ladder"):  # the ladder refits at rung 1
        problem.use_reconstruction()
    set_fidelity(cfg, problem, data)
    searcher = agents.build(cfg.agent, **_agent_options(cfg))
    if hasattr(searcher, "check_problem"):  # a searcher's own refusals (metapruning: space, PruningNet file)
        searcher.check_problem(problem)
    if cfg.workers > 1:
        if not hasattr(searcher, "batch"):
            batching = [n for n in agents.names() if hasattr(agents.build(n), "batch")]
            raise UserError(f"agent '{cfg.agent}' evaluates one candidate at a time: --workers > 1 needs one "
                            f"of {', '.join(batching)}")
        searcher.batch = cfg.workers
    return Setup(cfg, data, bundle, problem, searcher, device, inputs)


def refit_applies(cfg: SearchConfig, graph, data: DataBundle) -> bool:
    """Whether the default refit can run: channel space, and the model fed plain image batches."""
    return cfg.space == "channel" and graph.takes_one_tensor and data.batch_to_inputs is None


def set_fidelity(cfg: SearchConfig, problem: Problem, data: DataBundle) -> None:
    """`--fidelity` on the problem: full, auto (Evaluator.staged) or the ladder (autoprune.ladder)."""
    if cfg.fidelity not in ("full", "auto", "ladder"):
        raise UserError(f"--fidelity must be full, auto or ladder, not '{cfg.fidelity}'")
    if cfg.fidelity == "full":
        return
    if isinstance(problem.evaluator, FunctionEvaluator):
        raise UserError(f"--fidelity {cfg.fidelity} scores a slice of the held-out images first: it needs "
                        "held-out data, not an evaluate function")
    if cfg.workers > 1:
        raise UserError(f"--fidelity {cfg.fidelity} decides each candidate against those scored before it, in this "
                        "process: use it with --workers 1")
    problem.fidelity = cfg.fidelity
    if cfg.fidelity == "ladder":
        from autoprune.ladder import Ladder

        if not problem.space.graph.takes_one_tensor:
            raise UserError("--fidelity ladder fine-tunes on (image, label) batches: it needs a model fed one "
                            "image tensor")
        try:
            problem.ladder = Ladder(eta=cfg.ladder_eta, steps=cfg.ladder_steps, distill=cfg.ladder_distill,
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
        from autoprune.envs.layerwise import reward_function

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


def prepare_run_dir(cfg: SearchConfig) -> Path:
    out = cfg.out or default_out(cfg)
    if cfg.resume:
        if not out.is_dir():
            raise UserError(f"nothing to resume: {out} does not exist")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"run folder {out} already exists and is not empty: pass --resume or choose another --out")
    return out


def run_search(cfg: SearchConfig, *, on_result: Callable[[EvalResult, Problem], None] | None = None,
               on_stage: Callable[[str], None] | None = None) -> dict:
    """Run the whole job; returns the summary that is also written to OUT/policy.json."""
    out, setup = prepare_search(cfg)
    return execute_search(out, setup, on_result=on_result, on_stage=on_stage)


def prepare_search(cfg: SearchConfig, *, on_profile: Callable[[str, int, int], None] | None = None,
                   inputs: Inputs | None = None, on_stage: Callable[[str], None] | None = None) -> tuple[Path, Setup]:
    """Every check that can refuse the input; writes nothing. `on_stage` hears the graph analysis' stages."""
    out = prepare_run_dir(cfg)
    if cfg.workers > 1:  # an unreachable cluster: refused now (a TCP connect), before loading anything
        from autoprune.workers import check_ray_address

        check_ray_address(cfg.ray_address, "--ray-address")
    return out, build_setup(cfg, on_profile=on_profile, inputs=inputs, on_stage=on_stage)


def execute_search(out: Path, setup: Setup, *, on_result: Callable[[EvalResult, Problem], None] | None = None,
                   on_stage: Callable[[str], None] | None = None) -> dict:
    """Create the run folder and study, search, test the best policy, write policy and exports.

    A fresh run that fails (or is interrupted) before any evaluation is stored takes back what it
    wrote -- folder, study -- so the same command can run again; one with stored evaluations is
    kept, and the error says how to `--resume` it.
    """
    existed = out.exists()
    try:
        return _execute(out, setup, on_result=on_result, on_stage=on_stage)
    except BaseException as exc:
        hint = _after_failure(out, setup, existed)
        if hint and isinstance(exc, UserError):
            raise UserError(f"{exc}; {hint}") from None
        if hint:
            log.error("%s", hint)
        raise


def _after_failure(out: Path, setup: Setup, existed: bool) -> str | None:
    """Remove a failed fresh run's folder and study when nothing was stored; else the --resume hint."""
    cfg, study = setup.config, setup.problem.study
    if cfg.resume:
        return None
    stored = len(study.records()) if study is not None else 0
    if stored:
        return f"{stored} evaluations are stored in {out}: rerun with --resume to continue"
    checkpoint = getattr(setup.searcher, "checkpoint_path", None)
    if checkpoint is not None and Path(checkpoint).exists():  # e.g. a PruningNet trained for a while
        return f"{setup.searcher.name}'s checkpoint {checkpoint} is kept: rerun with --resume to continue from it"
    if study is not None and cfg.storage:  # an external database: free the study name for the rerun
        import optuna

        try:
            optuna.delete_study(study_name=study.study.study_name, storage=cfg.storage)
        except Exception:  # best effort: the original error matters more
            log.debug("could not delete study %s", study.study.study_name, exc_info=True)
    if out.exists():
        if existed:  # an empty folder the user gave: empty it again
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(out)
    return None


def _execute(out: Path, setup: Setup, *, on_result: Callable[[EvalResult, Problem], None] | None,
             on_stage: Callable[[str], None] | None) -> dict:
    cfg = setup.config
    stage = on_stage or (lambda s: None)
    problem, device = setup.problem, setup.device
    input_shape = tuple(problem.space.graph.input_shape)  # the data's image, or the user's example_inputs

    storage = cfg.storage or f"sqlite:///{out.resolve() / 'study.db'}"
    info = StudyInfo(cfg.model, cfg.agent, cfg.seed, cfg.budgets, problem.space.names)
    if cfg.storage:  # an external database may refuse (name taken): ask it before making the folder
        study = Study(storage, out.name, info, list(problem.space.max_ratios), resume=cfg.resume)
        out.mkdir(parents=True, exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        study = Study(storage, out.name, info, list(problem.space.max_ratios), resume=cfg.resume)
    problem.attach_study(study)
    checkpoint = getattr(setup.searcher, "checkpoint_file", None)  # a searcher's trained policy (gnn) lives here
    if checkpoint:
        setup.searcher.checkpoint_path = out / checkpoint
    (out / "run.json").write_text(json.dumps(_jsonable(asdict(cfg)), indent=2) + "\n")
    if setup.inputs is not None:  # an object policy.json cannot name: `autoprune apply/export` load this file
        from autoprune.rebuild import BASE_MODEL_FILE

        torch.save(setup.bundle.model, out / BASE_MODEL_FILE)

    stage("scoring the unpruned model")
    base_heldout = problem.evaluator(setup.bundle.model, recalibrate=False)["top1"]  # as shipped: no BN change
    if setup.data.evaluate is None:
        warn_if_chance(base_heldout, setup.data.num_classes)
    if on_result:
        problem.callbacks.append(lambda r: on_result(r, problem))
    n_evals = cfg.n_evals()
    start = time.perf_counter()
    if cfg.workers > 1:
        from autoprune.workers import WorkerPool, default_threads

        stage(f"starting {cfg.workers} Ray workers")
        with WorkerPool(cfg, cfg.workers, threads=default_threads(cfg.workers), address=cfg.ray_address,
                        inputs=setup.inputs) as pool:
            problem.pool = pool
            try:
                setup.searcher.search(problem, n_evals, seed=cfg.seed)
            finally:
                problem.pool = None
    else:
        setup.searcher.search(problem, n_evals, seed=cfg.seed)
    search_seconds = time.perf_counter() - start
    best = problem.best
    if best is None:
        raise UserError("the search evaluated no policy within the budget")
    best, picked = final_pick(problem, setup, best, stage)

    stage("testing the best policy")
    pruned = problem.pruned_model(best.ratios)
    graph = problem.space.graph
    test_split = setup.data.test  # None: the Python API was given no test data
    if test_split is not None and setup.data.evaluate is not None and logits_or_kind(setup.bundle.model,
                                                                                     graph.example()):
        test_split = None  # a model scored by the user's evaluate function (segmentation maps, features)
    base_test = None if test_split is None else accuracy(setup.bundle.model.to(device), test_split, device)["top1"]
    test = None if test_split is None else accuracy(pruned, test_split, device)["top1"]
    where = dict(batch=cfg.batch, device=device, threads=cfg.threads, min_seconds=1.0)  # as budgets count it
    timed = graph.takes_one_tensor
    latency = {"base": measure_latency_ms(setup.bundle.model, input_shape, **where) if timed else None,
               "pruned": measure_latency_ms(pruned, input_shape, **where) if timed else None}
    policy = problem.policy(best.ratios)
    summary = {
        "model": cfg.model, "weights": setup.bundle.weights, "data": cfg.data, "input_shape": list(input_shape),
        "space": problem.space.describe(), "ignore": cfg.ignore, "prune_stem": cfg.stem_cap() > 0,
        "frozen_groups": [f.to_dict() for f in graph.frozen],
        "example_inputs": None if graph.example_inputs is None else type(graph.example_inputs).__name__,
        "criterion": cfg.criterion, "agent": cfg.agent, "seed": cfg.seed,
        "budgets": cfg.budgets, "macs": best.costs["macs"], "base_macs": problem.base_costs["macs"],
        "params": best.costs["params"], "base_params": problem.base_costs["params"],
        # the returned model's own score: with the ladder its full rung (the top rung's fine-tune is not kept)
        "heldout_accuracy": best.rung_accuracy[1] if best.rung_accuracy and best.rung else best.accuracy,
        "base_heldout_accuracy": base_heldout,
        **({"ladder_heldout_accuracy": best.accuracy} if best.rung is not None and problem.ladder.steps else {}),
        "test_accuracy": test, "base_test_accuracy": base_test,
        "latency_ms": latency["pruned"], "base_latency_ms": latency["base"], "latency_batch": cfg.batch,
        "latency_device": device.type,
        "evaluations": problem.n_evals, "cached_evaluations": sum(r.cached for r in problem.results),
        "fidelity": cfg.fidelity, "partial_evaluations": sum(r.partial for r in problem.results),
        **({"ladder": problem.ladder.describe()} if problem.ladder is not None else {}),
        "best_evaluation": best.index, "search_seconds": round(search_seconds, 2),
        "overhead_share": round(problem.overhead_share(), 4),
        "heldout_images": None if setup.data.heldout is None else len(setup.data.heldout),
        "scored_by": "held-out top-1" if setup.data.evaluate is None else "evaluate function",
        "calib_batches": cfg.calib_batches,
        "storage": public_url(storage) if cfg.storage else "study.db",
    }
    summary.update(picked)
    summary.update(policy_details(problem, best))
    front = getattr(setup.searcher, "pareto_front", None)  # multi-objective searchers (nsga2)
    if front:
        (out / "pareto.json").write_text(json.dumps(_jsonable(front), indent=2) + "\n")
        summary["pareto_front_size"] = len(front)
    policy.meta = summary
    policy.save(out / "policy.json")
    setup.policy, setup.pruned = policy, pruned  # for the Python API's result

    stage("writing the pruned model and exports")
    from autoprune.export import save_pruned_model, write_exports

    example = problem.space.graph.example()
    if problem.space.kind == "channel":
        files = write_exports(out, problem.space.graph, policy, pruned, example, base=problem.model,
                              orders=problem.channel_orders())
    else:  # unstructured: NNI reads per-layer sparsity directly; the model file holds the zeros
        nni = [{"op_names": [n], "sparsity_per_layer": r} for n, r in policy.ratios.items() if r > 0]
        files = {"nni_config_list": out / "nni_config_list.json", **save_pruned_model(pruned, out, example)}
        files["nni_config_list"].write_text(json.dumps(nni, indent=2) + "\n")
    if hasattr(setup.searcher, "extras"):  # metapruning: the winner with PruningNet-generated weights too
        stage("scoring the winner with PruningNet weights")
        summary["pruningnet"] = setup.searcher.extras(out, best.ratios, problem, setup.data.test)
        files["pruned_pruningnet"] = Path(summary["pruningnet"]["file"])
        policy.meta = summary
        policy.save(out / "policy.json")
    if cfg.finetune_epochs > 0:
        from autoprune.finetune import finetune_run

        stage(f"fine-tuning for {cfg.finetune_epochs} epochs")
        loaded = None
        if setup.inputs is not None:  # objects that policy.json cannot name: fine-tune a copy of what is in memory
            from autoprune.rebuild import LoadedRun

            loaded = LoadedRun(policy, setup.bundle.model, copy.deepcopy(pruned), problem.space.graph, setup.data)
        summary.update(finetune_run(out, cfg.finetune_epochs, device=cfg.device, distill=cfg.distill, loaded=loaded))
    if front:
        files["pareto_front"] = out / "pareto.json"
    if checkpoint and (out / checkpoint).exists():
        files["policy_network"] = out / checkpoint
    report = write_run_report(out)
    if report is not None:
        files["report"] = report
    summary["files"] = {k: str(v) for k, v in {"policy": out / "policy.json", "study": public_url(storage),
                                               **files}.items()}
    return summary


def warn_if_chance(base_heldout: float, num_classes: int) -> None:
    """One warning when the unpruned model's held-out top-1 is within 2 points of chance (or below it)."""
    chance = 1.0 / num_classes if num_classes else 0.0
    if chance and base_heldout <= chance + 0.02:
        log.warning("the base model scores %.1f%% on held-out, chance is %.1f%%: its weights look untrained; "
                    "the search will rank noise", 100 * base_heldout, 100 * chance)


def write_run_report(folder: Path) -> Path | None:
    """report.html of a finished run or sweep; a failure is logged, never the end of a search that succeeded."""
    from autoprune.report import write_report

    try:
        return write_report(folder)
    except Exception as exc:  # the results are written already: a plot must not take them away
        log.warning("could not write %s: %s: %s (run `autoprune report %s` again)", folder / "report.html",
                    type(exc).__name__, exc, folder)
        return None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
