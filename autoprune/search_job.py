"""A search job: build the problem from a config, run a searcher on it, report and write results.

Validation (model, data, weights, budgets, agent) happens before anything is written
(autoprune.job_setup), so bad input leaves no half-made run folder. A run folder is never reused
without `resume=True`; a resumed run replays its searcher from the seed and takes stored
evaluations from the study.
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from autoprune import agents
from autoprune.cost.measured import measure_latency_ms
from autoprune.errors import UserError
from autoprune.evaluate import accuracy
from autoprune.job_setup import (Inputs, SearchConfig, Setup, build_setup, check_config,  # noqa: F401 - re-exported
                                 logits_or_kind)
from autoprune.outcome import final_pick, policy_details
from autoprune.policy import Policy
from autoprune.problem import EvalResult, Problem
from autoprune.run_summary import RunSummary
from autoprune.study import Study, StudyInfo, public_url

log = logging.getLogger(__name__)

ResultCallback = Callable[[EvalResult, Problem], None]
ProgressCallback = Callable[[str, int, int], None]


def default_out(cfg: SearchConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = agents.label(cfg.agent)
    return Path("runs") / f"{cfg.model.replace(':', '_').replace('/', '_')}-{name}-s{cfg.seed}-{stamp}"


def prepare_run_dir(cfg: SearchConfig) -> Path:
    out = cfg.out or default_out(cfg)
    if cfg.resume:
        if not out.is_dir():
            raise UserError(f"nothing to resume: {out} does not exist")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"run folder {out} already exists and is not empty: pass --resume or choose another --out")
    return out


def run_search(cfg: SearchConfig, *, on_result: ResultCallback | None = None,
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


def execute_search(out: Path, setup: Setup, *, on_result: ResultCallback | None = None,
                   on_stage: Callable[[str], None] | None = None, on_progress: ProgressCallback | None = None) -> dict:
    """Create the run folder and study, search, test the best policy, write policy and exports.

    A fresh run that fails (or is interrupted) before any evaluation is stored takes back what it
    wrote -- folder, study -- so the same command can run again; one with stored evaluations is
    kept, and the error says how to `--resume` it.
    """
    existed = out.exists()
    try:
        return _execute(out, setup, on_result=on_result, on_stage=on_stage or (lambda s: None),
                        on_progress=on_progress)
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
    checkpoint = setup.searcher.checkpoint_path
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


def _execute(out: Path, setup: Setup, *, on_result: ResultCallback | None, on_stage: Callable[[str], None],
             on_progress: ProgressCallback | None) -> dict:
    """The steps of a run, in order; each writes or returns what the next one needs."""
    problem = setup.problem
    storage = _open_run(out, setup)
    on_stage("scoring the unpruned model")
    base_heldout = problem.evaluator(setup.bundle.model, recalibrate=False)["top1"]  # as shipped: no BN change
    if setup.data.evaluate is None:
        warn_if_chance(base_heldout, setup.data.num_classes)
    if on_result:
        problem.on_result(lambda r: on_result(r, problem))
    if on_progress:
        problem.on_progress(on_progress)
    on_stage(f"searching ({agents.label(setup.config.agent)})")
    search_seconds = _run_searcher(setup, on_stage)
    best = problem.best
    if best is None:
        raise UserError("the search evaluated no policy within the budget")
    best, picked = final_pick(problem, setup, best, on_stage)
    on_stage("testing the best policy")
    pruned = problem.pruned_model(best.ratios)
    summary = _summarise(setup, best, pruned, base_heldout=base_heldout, search_seconds=search_seconds,
                         storage=storage)
    summary.update(picked)
    summary.update(policy_details(problem, best))
    policy = problem.policy(best.ratios)
    files = _write_results(out, setup, policy, summary, best, pruned, on_stage)
    report = write_run_report(out)
    if report is not None:
        files["report"] = report
    files = {"policy": out / "policy.json", "study": public_url(storage), **files}
    return {**summary.to_meta(), "files": {k: str(v) for k, v in files.items()}}


def _open_run(out: Path, setup: Setup) -> str:
    """Make the run folder and its study (or reopen them with --resume), write run.json; the study's URL."""
    cfg, problem = setup.config, setup.problem
    storage = cfg.storage or f"sqlite:///{out.resolve() / 'study.db'}"
    info = StudyInfo(cfg.model, cfg.agent, cfg.seed, cfg.budgets, problem.space.names)
    if cfg.storage:  # an external database may refuse (name taken): ask it before making the folder
        study = Study(storage, out.name, info, list(problem.space.max_ratios), resume=cfg.resume)
        out.mkdir(parents=True, exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        study = Study(storage, out.name, info, list(problem.space.max_ratios), resume=cfg.resume)
    problem.attach_study(study)
    if setup.searcher.checkpoint_file:  # a searcher's state (gnn's policy, the PruningNet) lives in the folder
        setup.searcher.checkpoint_path = out / setup.searcher.checkpoint_file
    (out / "run.json").write_text(json.dumps(_jsonable(asdict(cfg)), indent=2) + "\n")
    if setup.inputs is not None:  # an object policy.json cannot name: `autoprune apply/export` load this file
        from autoprune.rebuild import BASE_MODEL_FILE

        torch.save(setup.bundle.model, out / BASE_MODEL_FILE)
    return storage


def _run_searcher(setup: Setup, stage: Callable[[str], None]) -> float:
    """The search itself (on Ray workers with --workers N); its seconds."""
    cfg, problem = setup.config, setup.problem
    start = time.perf_counter()
    if cfg.workers > 1:
        from autoprune.workers import WorkerPool, default_threads

        stage(f"starting {cfg.workers} Ray workers")
        with WorkerPool(cfg, cfg.workers, threads=default_threads(cfg.workers), address=cfg.ray_address,
                        inputs=setup.inputs) as pool, problem.scoring_on(pool):
            setup.searcher.search(problem, cfg.n_evals(), seed=cfg.seed)
    else:
        setup.searcher.search(problem, cfg.n_evals(), seed=cfg.seed)
    return time.perf_counter() - start


def _test_split(setup: Setup):
    """The test split the returned model is scored on; None without one or when top-1 cannot score the model
    (a model scored by the user's evaluate function: segmentation maps, features)."""
    test = setup.data.test
    if test is not None and setup.data.evaluate is not None and logits_or_kind(setup.bundle.model,
                                                                               setup.problem.space.graph.example()):
        return None
    return test


def _summarise(setup: Setup, best: EvalResult, pruned: torch.nn.Module, *, base_heldout: float,
               search_seconds: float, storage: str) -> RunSummary:
    """policy.json's account of the run: what was searched, the pick's costs, scores and latency."""
    cfg, problem, device = setup.config, setup.problem, setup.device
    graph = problem.space.graph
    input_shape = tuple(graph.input_shape)  # the data's image, or the user's example_inputs
    test_split = _test_split(setup)
    where = dict(batch=cfg.batch, device=device, threads=cfg.threads, min_seconds=1.0)  # as budgets count it
    timed = graph.takes_one_tensor
    ladder = problem.ladder
    return RunSummary(
        model=cfg.model, weights=setup.bundle.weights, data=cfg.data, input_shape=list(input_shape),
        space=problem.space.describe(), ignore=cfg.ignore, prune_stem=cfg.stem_cap() > 0,
        frozen_groups=[f.to_dict() for f in graph.frozen],
        example_inputs=None if graph.example_inputs is None else type(graph.example_inputs).__name__,
        criterion=cfg.criterion, agent=cfg.agent, seed=cfg.seed, budgets=cfg.budgets,
        macs=best.costs["macs"], base_macs=problem.base_costs["macs"],
        params=best.costs["params"], base_params=problem.base_costs["params"],
        # the returned model's own score: with the ladder its full rung (the top rung's fine-tune is not kept)
        heldout_accuracy=best.rung_accuracy[1] if best.rung_accuracy and best.rung else best.accuracy,
        base_heldout_accuracy=base_heldout,
        ladder_heldout_accuracy=best.accuracy if best.rung is not None and ladder.steps else None,
        test_accuracy=None if test_split is None else accuracy(pruned, test_split, device)["top1"],
        base_test_accuracy=(None if test_split is None else
                            accuracy(setup.bundle.model.to(device), test_split, device)["top1"]),
        latency_ms=measure_latency_ms(pruned, input_shape, **where) if timed else None,
        base_latency_ms=measure_latency_ms(setup.bundle.model, input_shape, **where) if timed else None,
        latency_batch=cfg.batch, latency_device=device.type,
        evaluations=problem.n_evals, cached_evaluations=sum(r.cached for r in problem.results),
        fidelity=cfg.fidelity, partial_evaluations=sum(r.partial for r in problem.results),
        ladder=ladder.describe() if ladder is not None else None,
        best_evaluation=best.index, search_seconds=round(search_seconds, 2),
        overhead_share=round(problem.overhead_share(), 4),
        heldout_images=None if setup.data.heldout is None else len(setup.data.heldout),
        scored_by="held-out top-1" if setup.data.evaluate is None else "evaluate function",
        calib_batches=cfg.calib_batches, storage=public_url(storage) if cfg.storage else "study.db")


def _write_results(out: Path, setup: Setup, policy: Policy, summary: RunSummary, best: EvalResult,
                   pruned: torch.nn.Module, stage: Callable[[str], None]) -> dict[str, Path]:
    """policy.json, the Pareto front, the exports, the searcher's extras and the fine-tune; the files written."""
    cfg, problem, searcher = setup.config, setup.problem, setup.searcher
    front = searcher.pareto_front()  # multi-objective searchers (nsga2)
    files: dict[str, Path] = {}
    if front:
        files["pareto_front"] = out / "pareto.json"
        files["pareto_front"].write_text(json.dumps(_jsonable(front), indent=2) + "\n")
        summary.pareto_front_size = len(front)
    _save_policy(out, policy, summary)
    setup.policy, setup.pruned = policy, pruned  # for the Python API's result
    stage("writing the pruned model and exports")
    files.update(_write_exports(out, problem, policy, pruned))
    extras = searcher.extras(out, best.ratios, problem, setup.data.test)
    if extras:  # metapruning: the winner with PruningNet-generated weights too
        summary.update(extras)
        files.update({key: Path(entry["file"]) for key, entry in extras.items()
                      if isinstance(entry, dict) and entry.get("file")})
        _save_policy(out, policy, summary)
    if cfg.finetune_epochs > 0:
        summary.update(_finetune(out, setup, policy, pruned, stage))
    if searcher.checkpoint_file and (out / searcher.checkpoint_file).exists():
        files["policy_network"] = out / searcher.checkpoint_file
    return files


def _save_policy(out: Path, policy: Policy, summary: RunSummary) -> None:
    policy.meta = summary.to_meta()
    policy.save(out / "policy.json")


def _write_exports(out: Path, problem: Problem, policy: Policy, pruned: torch.nn.Module) -> dict[str, Path]:
    """The pruned model and what other tools read (Torch-Pruning, NNI, ONNX): autoprune.export."""
    from autoprune.export import save_pruned_model, write_exports

    example = problem.space.graph.example()
    if problem.space.kind == "channel":
        return write_exports(out, problem.space.graph, policy, pruned, example, base=problem.model,
                             orders=problem.channel_orders())
    # unstructured: NNI reads per-layer sparsity directly; the model file holds the zeros
    nni = [{"op_names": [n], "sparsity_per_layer": r} for n, r in policy.ratios.items() if r > 0]
    files = {"nni_config_list": out / "nni_config_list.json", **save_pruned_model(pruned, out, example)}
    files["nni_config_list"].write_text(json.dumps(nni, indent=2) + "\n")
    return files


def _finetune(out: Path, setup: Setup, policy: Policy, pruned: torch.nn.Module, stage: Callable[[str], None]) -> dict:
    """--finetune-epochs: train the pruned model further (autoprune.finetune writes its results to policy.json)."""
    from autoprune.finetune import finetune_run

    cfg = setup.config
    stage(f"fine-tuning for {cfg.finetune_epochs} epochs")
    loaded = None
    if setup.inputs is not None:  # objects that policy.json cannot name: fine-tune a copy of what is in memory
        from autoprune.rebuild import LoadedRun

        loaded = LoadedRun(policy, setup.bundle.model, copy.deepcopy(pruned), setup.problem.space.graph, setup.data)
    return finetune_run(out, cfg.finetune_epochs, device=cfg.device, distill=cfg.distill, loaded=loaded,
                        start=cfg.finetune_start)


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
