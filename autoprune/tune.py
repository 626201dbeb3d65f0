"""Sweeps: a YAML grid of searches (models × budgets × agents × seeds) run as one Ray Tune experiment.

Each (model, budget, agent, seed) is one Tune trial whose body is autoprune's own `run_search`,
with its run folder under SWEEP/runs/; after every evaluation the trial reports the best-so-far
held-out accuracy to Tune. Ray's experiment state lives in SWEEP/ray/ (`RunConfig(storage_path=)`),
so `resume=True` restores the experiment with `Tuner.restore`: finished trials are kept, errored
and unfinished ones run again. A trial that runs again finds its run folder and continues it the
way `autoprune search --resume` does (stored evaluations are not recomputed; a folder that already
holds policy.json is reported as it is), which also covers a sweep killed before Ray saved its state.

The sweep file is validated (keys, types, model / agent / criterion names, budget syntax) before
Ray starts and before anything is written. Problems only a trial can find (missing data or
weights, an infeasible budget) fail that trial; failed trials get a row with their error.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from autoprune.errors import UserError
# The result tables (sweep_results.json/.md) live with the report, which draws them too.
from autoprune.report.sweep import RESULTS_JSON, RESULTS_MD, collect, write_results  # noqa: F401

log = logging.getLogger(__name__)

SPEC_FILE = "sweep.yaml"
EXPERIMENT = "ray"  # Ray's experiment folder inside the sweep folder

# What the grid is made of: the plural of a SearchConfig field, a list in the sweep file.
GRID_KEYS = ("models", "budgets", "agents", "seeds")
# Sweep-level keys that are not SearchConfig fields.
SWEEP_KEYS = ("max_concurrent", "cpus_per_trial", "gpus_per_trial")
# SearchConfig fields a sweep file may not set, and why.
NOT_IN_SWEEP = {
    "model": "use 'models' (a list)", "agent": "use 'agents' (a list)", "seed": "use 'seeds' (a list)",
    "out": "trial run folders live in the sweep folder (autoprune sweep --out)",
    "resume": "use autoprune sweep --resume", "ray_address": "use autoprune sweep --address",
    "workers": "a trial evaluates on its own cpus_per_trial; run more trials at once with max_concurrent",
}


@dataclass
class SweepSpec:
    """A validated sweep file: the grid, the settings shared by every search, and Ray resources."""

    models: list[str]
    budgets: list[list[str]]  # each entry: the budgets of one search, all of which must hold
    agents: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    evals: int | dict[str, int] | None = None  # one count, or one per agent; default the agent's
    weights: str | dict[str, str] | None = None  # one for all models, or one per model
    agent_options: dict[str, dict] = field(default_factory=dict)  # per agent
    search: dict = field(default_factory=dict)  # other SearchConfig fields, shared by every trial
    max_concurrent: int | None = None  # default: as many as the resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def trials(self) -> list[dict]:
        """One JSON-able dict per search: its name (also its run folder) and its SearchConfig fields."""
        out = []
        for model in self.models:
            for budgets in self.budgets:
                for agent in self.agents:
                    for seed in self.seeds:
                        evals = self.evals.get(agent) if isinstance(self.evals, dict) else self.evals
                        weights = self.weights.get(model) if isinstance(self.weights, dict) else self.weights
                        out.append({"name": trial_name(model, budgets, agent, seed),
                                    "config": {**self.search, "model": model, "budgets": list(budgets),
                                               "agent": agent, "seed": seed, "evals": evals, "weights": weights,
                                               "agent_options": dict(self.agent_options.get(agent, {}))}})
        return out

    def threads(self) -> int:
        """Torch threads per trial: its CPU share, so concurrent trials do not oversubscribe the cores."""
        return max(1, math.floor(self.cpus_per_trial))


def trial_name(model: str, budgets: list[str], agent: str, seed: int) -> str:
    budget = "+".join(b.replace("%", "pct") for b in budgets)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{model}-{budget}-{agent}-s{seed}")


# ---------------------------------------------------------------------------------------------
# Reading and validating a sweep file (nothing is written, Ray is not started)


def load_sweep(path: Path) -> SweepSpec:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"cannot read sweep file {path}: {exc.strerror or exc}") from None
    return parse_sweep(text, str(path))


def parse_sweep(text: str, source: str = "sweep file") -> SweepSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source} is not valid YAML{where}: {problem}") from None
    if data is None:
        raise UserError(f"{source} is empty: it needs at least models, budgets and agents")
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a mapping of keys (models, budgets, agents, seeds, ...), "
                        f"not {type(data).__name__}")
    shared = _shared_fields()
    allowed = [*GRID_KEYS, "evals", "weights", "agent_options", *SWEEP_KEYS, *shared]
    for key in data:
        if not isinstance(key, str) or key not in allowed:
            if isinstance(key, str) and key in NOT_IN_SWEEP:
                raise UserError(f"{source}: key '{key}' cannot be set in a sweep file: {NOT_IN_SWEEP[key]}")
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(allowed)}"
            raise UserError(f"{source}: unknown key '{key}'{hint}")
    for key in ("models", "budgets", "agents"):
        if key not in data or data[key] in (None, [], ""):
            raise UserError(f"{source}: '{key}' is required (a list)")

    models = _str_list(data, "models", source)
    budgets = [_budget_set(b, source) for b in _as_list(data["budgets"])]
    agent_names = _str_list(data, "agents", source)
    seeds = _as_list(data.get("seeds", [0]))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"{source}: 'seeds' must be a list of integers")
    _check_models(models, source)
    _check_agents(agent_names, source)
    for key, values in (("models", models), ("agents", agent_names), ("seeds", seeds)):
        dup = next((v for v in values if values.count(v) > 1), None)
        if dup is not None:
            raise UserError(f"{source}: '{key}' lists {dup} twice")

    search = {}
    for key, hint in shared.items():
        if key in data:
            search[key] = _typed(data[key], hint, f"{source}: '{key}'")
    if "criterion" in search:
        from autoprune.policy import CRITERIA

        if search["criterion"] not in CRITERIA:
            raise UserError(f"{source}: unknown criterion '{search['criterion']}': one of {', '.join(CRITERIA)}")
    search = _absolute_paths(search, shared)

    spec = SweepSpec(models, budgets, agent_names, seeds,
                     evals=_per_key(data.get("evals"), "evals", agent_names, "agent", int, source),
                     weights=_per_key(data.get("weights"), "weights", models, "model", str, source),
                     agent_options=_agent_options(data.get("agent_options"), agent_names, source),
                     search=search,
                     max_concurrent=_number(data, "max_concurrent", int, source, default=None),
                     cpus_per_trial=_number(data, "cpus_per_trial", float, source, default=1.0),
                     gpus_per_trial=_number(data, "gpus_per_trial", float, source, default=0.0, minimum=0.0))
    if isinstance(spec.weights, str):
        spec.weights = _absolute_file(spec.weights)
    elif isinstance(spec.weights, dict):
        spec.weights = {m: _absolute_file(w) for m, w in spec.weights.items()}
    evals = [spec.evals] if isinstance(spec.evals, int) else list((spec.evals or {}).values())
    if any(e < 1 for e in evals):
        raise UserError(f"{source}: 'evals' must be at least 1")
    names = [t["name"] for t in spec.trials()]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise UserError(f"{source}: two searches would share the run folder name '{dup}'")
    return spec


def _shared_fields() -> dict[str, object]:
    """SearchConfig fields a sweep file may set for every trial, with their types."""
    from autoprune.search_job import SearchConfig

    hints = typing.get_type_hints(SearchConfig)
    special = {"budgets", "evals", "weights", "agent_options"}  # grid keys, or one value per model / agent
    return {f.name: hints[f.name] for f in dataclasses.fields(SearchConfig)
            if f.name not in NOT_IN_SWEEP and f.name not in special}


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _str_list(data: dict, key: str, source: str) -> list[str]:
    values = _as_list(data[key])
    if not all(isinstance(v, str) and v for v in values):
        raise UserError(f"{source}: '{key}' must be a list of names")
    return values


def _budget_set(entry, source: str) -> list[str]:
    """One grid point of 'budgets': a budget ("50%FLOPs") or a list of budgets that must all hold."""
    from autoprune.budget import parse_budget

    texts = _as_list(entry)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise UserError(f"{source}: each entry of 'budgets' must be a budget such as \"50%FLOPs\" "
                        f"or a list of such (all must hold), not {entry!r}")
    for t in texts:
        try:  # syntax only: relative budgets need the model, which a trial builds
            parse_budget(t, _UnitBase())
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
    return texts


class _UnitBase(dict):
    """A base model that costs 1 in every metric: lets `parse_budget` judge syntax without a model."""

    def __contains__(self, key) -> bool:
        return True

    def __missing__(self, key) -> float:
        return 1.0


def _check_models(models: list[str], source: str) -> None:
    from autoprune.zoo import list_models

    known = {name for name, _ in list_models()}
    for m in models:
        if m not in known and ":" not in m:  # package.module:factory is imported by the trial
            close = difflib.get_close_matches(m, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{source}: unknown model '{m}'{hint}: see `autoprune models` (or package.module:factory)")


def _check_agents(names: list[str], source: str) -> None:
    from autoprune import agents

    for a in names:
        try:
            agents.searcher_class(a)
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None


def _typed(value, hint, what: str):
    """`value` checked against a SearchConfig field type (str, int, float, bool, None, list[str], dict)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    for opt in options:
        if opt is type(None) and value is None:
            return None
        if opt is bool and isinstance(value, bool):
            return value
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is str and isinstance(value, str):
            return value
        if typing.get_origin(opt) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if (opt is dict or typing.get_origin(opt) is dict) and isinstance(value, dict):
            return dict(value)
        if opt is Path and isinstance(value, str):
            return value
    names = " or ".join("null" if o is type(None) else "a list of strings" if typing.get_origin(o) is list
                        else getattr(o, "__name__", str(o)) for o in options)
    raise UserError(f"{what} must be {names}, not {value!r}")


def _per_key(value, key: str, allowed: list[str], kind: str, typ: type, source: str):
    """A value for all (`evals: 40`) or a mapping per model / agent (`evals: {random: 40, uniform: 1}`)."""
    if value is None:
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in allowed:
                raise UserError(f"{source}: '{key}' names {kind} '{k}', which is not in the sweep's {kind}s")
            if not isinstance(v, typ) or isinstance(v, bool):
                raise UserError(f"{source}: '{key}' for {k} must be {'an integer' if typ is int else 'a string'}")
        return dict(value)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise UserError(f"{source}: '{key}' must be {'an integer' if typ is int else 'a string'} "
                        f"or a mapping {kind} -> value")
    return value


def _agent_options(value, agent_names: list[str], source: str) -> dict[str, dict]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise UserError(f"{source}: 'agent_options' must map an agent to its options, e.g. {{ddpg: {{warmup: 20}}}}")
    for k in value:
        if k not in agent_names:
            raise UserError(f"{source}: 'agent_options' names agent '{k}', which is not in the sweep's agents")
    return {k: dict(v) for k, v in value.items()}


def _number(data: dict, key: str, typ: type, source: str, *, default, minimum: float | None = None):
    """A positive number (or >= `minimum`); null keeps the default."""
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (typ is int and not isinstance(value, int)):
        raise UserError(f"{source}: '{key}' must be a {'whole ' if typ is int else ''}number, not {value!r}")
    if value <= 0 if minimum is None else value < minimum:
        raise UserError(f"{source}: '{key}' must be {'positive' if minimum is None else f'at least {minimum:g}'}")
    return typ(value)


def _is_path(hint) -> bool:
    return hint is Path or Path in typing.get_args(hint)


def _search_config(fields: dict, **extra):
    """A SearchConfig from a trial's JSON-able fields: Path-typed ones back to Path."""
    from autoprune.search_job import SearchConfig

    hints = typing.get_type_hints(SearchConfig)
    return SearchConfig(**{k: Path(v) if isinstance(v, str) and _is_path(hints[k]) else v for k, v in fields.items()},
                        **extra)


def _absolute_file(path: str) -> str:
    """Ray runs each trial in its own working directory: make paths that exist here absolute."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def _absolute_paths(search: dict, hints: dict[str, object]) -> dict:
    out = dict(search)
    for key, value in search.items():
        if isinstance(value, str) and _is_path(hints[key]):
            out[key] = _absolute_file(value)
    data = out.get("data")
    if isinstance(data, str):  # fashion-mnist:ROOT, cifar10:ROOT, imagenet:PATH, folder:PATH
        kind, sep, arg = data.partition(":")
        if sep and arg and Path(arg).exists():
            out["data"] = f"{kind}:{Path(arg).resolve()}"
    return out


# ---------------------------------------------------------------------------------------------
# The sweep folder


def prepare_sweep_dir(spec: SweepSpec, out: Path, *, resume: bool) -> Path:
    """Refuse to overwrite a sweep, or to resume one with different trials; writes nothing."""
    if not resume:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"sweep folder {out} already exists and is not empty: pass --resume or choose another --out")
        return out
    stored = out / SPEC_FILE
    if not stored.is_file():
        raise UserError(f"nothing to resume: {stored} does not exist")
    before = parse_sweep(stored.read_text(), str(stored))
    if before.trials() != spec.trials() or _resources(before) != _resources(spec):
        raise UserError(f"the sweep file differs from the one {out} was started with ({stored}): "
                        f"resume with that file, or start a new --out")
    return out


def _resources(spec: SweepSpec) -> tuple:
    return spec.cpus_per_trial, spec.gpus_per_trial, spec.max_concurrent


# ---------------------------------------------------------------------------------------------
# Running: Ray Tune


def run_sweep(spec: SweepSpec, out: Path, *, spec_text: str, resume: bool = False, address: str | None = None,
              num_cpus: int | None = None, verbose: int = 1) -> dict:
    """Run (or resume) the sweep in `out`; returns the results also written to sweep_results.json/.md.

    Ray starts locally with `num_cpus` (default: this machine's) unless it is already running in
    this process (then it is used as it is) or `address` names a cluster to join.
    """
    out = prepare_sweep_dir(spec, out, resume=resume)
    import ray
    from ray import tune

    started = not ray.is_initialized()
    if started:
        if address:
            from autoprune.workers import connect_ray

            connect_ray(address, "--address")
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "runs").mkdir(exist_ok=True)
        if not resume:
            (out / SPEC_FILE).write_text(spec_text)
        trials = {t["name"]: t["config"] for t in spec.trials()}
        # The grid is over trial names, so Ray's tables show them; each trial's SearchConfig fields
        # travel with the trainable (tune.with_parameters: put in Ray's object store once).
        param_space = {"trial": tune.grid_search(list(trials))}
        trainable = tune.with_resources(
            tune.with_parameters(_trial, trials=trials, runs=str((out / "runs").resolve()), threads=spec.threads()),
            {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
        experiment = out.resolve() / EXPERIMENT
        start = time.perf_counter()
        if resume and tune.Tuner.can_restore(str(experiment)):
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
        else:  # a fresh sweep, or one killed before Ray first saved its state: run folders still resume
            tuner = tune.Tuner(
                trainable, param_space=param_space,
                tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent,
                                            trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname),
                run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out.resolve()), verbose=verbose))
        grid = tuner.fit()
        seconds = time.perf_counter() - start
        errors = {r.config["trial"]: _error_line(r.error) for r in grid if r.error is not None}
        results = collect(out, spec.trials(), errors)
        results["sweep_seconds"] = round(seconds, 1)
        write_results(out, results)
        from autoprune.search_job import write_run_report

        write_run_report(out)
        return results
    finally:
        if started:
            ray.shutdown()


def _trial_dirname(trial) -> str:
    return trial.config["trial"]


def _trial(config: dict, *, trials: dict[str, dict], runs: str, threads: int) -> None:
    """One search inside a Ray worker: run_search in the trial's run folder, best-so-far to Tune."""
    import torch
    from ray import tune

    from autoprune.search_job import run_search

    torch.set_num_threads(threads)
    name = config["trial"]
    out = Path(runs) / name
    if (out / "policy.json").exists():  # finished before, in a sweep Ray did not get to record
        tune.report(_final_metrics(json.loads((out / "policy.json").read_text())))
        return
    # An earlier attempt that got as far as its study continues it instead of starting over.
    cfg = _search_config(trials[name], out=out, resume=(out / "run.json").exists())

    def on_result(result, problem) -> None:
        best = problem.best
        tune.report({"heldout_accuracy": best.accuracy, "evaluations": problem.n_evals,
                     "macs_ratio": best.costs["macs"] / problem.base_costs["macs"],
                     "last_accuracy": result.accuracy})

    tune.report(_final_metrics(run_search(cfg, on_result=on_result)))


def _final_metrics(summary: dict) -> dict:
    from autoprune.run_summary import RunSummary  # imports torch (via policy): only inside a trial

    s = RunSummary.read(summary)
    return {"heldout_accuracy": s.heldout_accuracy, "test_accuracy": s.test_accuracy,
            "evaluations": s.evaluations, "macs_ratio": s.macs / s.base_macs,
            **({"finetuned_test_accuracy": s.finetuned_test_accuracy} if s.finetuned_test_accuracy is not None else {}),
            "done": True}


def _error_line(error: BaseException) -> str:
    """The failing trial's own exception in one line (Ray wraps it in its task error)."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    line = text[-1] if text else ""
    if isinstance(cause, UserError):
        return text[0] if text else "error"
    return f"{type(cause).__name__}: {line}"[:300]
