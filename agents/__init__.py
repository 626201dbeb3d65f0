"""Searchers, registered by name. Heavy optional imports happen in `build`, not at import time.

A searcher subclasses `Searcher` (agents/base.py: the hooks the search job calls, each documented)
and proposes ratio vectors to `problem.evaluate`; the problem keeps the results, the best and the
study. Same seed, same proposals: that is what makes `--resume` (replay from the seed, evaluations
from the study) work for every one.

Besides the names below, `--agent` takes a searcher of the user's own as `package.module:Class` or
`path/to/file.py:Class` (docs/searchers.md, "Adding a searcher"): nothing outside that file changes.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

from autoprune.agents.base import Searcher
from autoprune.errors import UserError

__all__ = ["DEFAULT_AGENT", "REGISTRY", "Searcher", "accepts", "build", "label", "default_evals", "names", "parse_options",
           "resolve", "searcher_class"]


# name -> (module, class, one-line description)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "random": ("autoprune.agents.baselines", "RandomSearch",
               "EagleEye: random per-group ratios projected onto the budget; best held-out accuracy wins"),
    "uniform": ("autoprune.agents.baselines", "UniformSearch",
                "one ratio for every group, bisected to the budget"),
    "global": ("autoprune.agents.baselines", "GlobalSearch",
               "Torch-Pruning's global magnitude ranking, bisected to the budget"),
    "ddpg": ("autoprune.agents.ddpg", "DDPGSearch",
             "AMC: DDPG (stable-baselines3) picks each group's ratio in turn, budget by action clipping"),
    "sb3:td3": ("autoprune.agents.ddpg", "SB3Search", "stable-baselines3 TD3 on AMC's layer-by-layer env"),
    "sb3:sac": ("autoprune.agents.ddpg", "SB3Search", "stable-baselines3 SAC on AMC's layer-by-layer env"),
    "sb3:ppo": ("autoprune.agents.ddpg", "SB3Search", "stable-baselines3 PPO on AMC's layer-by-layer env"),
    "tpe": ("autoprune.agents.optuna", "OptunaSearch",
            "Optuna TPE (multivariate), one ratio per group, projected onto the budget"),
    "cmaes": ("autoprune.agents.optuna", "OptunaSearch", "Optuna CMA-ES, one ratio per group, projected onto the budget"),
    "qmc": ("autoprune.agents.optuna", "OptunaSearch",
            "Optuna quasi-Monte Carlo (scrambled Sobol), projected onto the budget"),
    "optuna:random": ("autoprune.agents.optuna", "OptunaSearch", "Optuna's RandomSampler, projected onto the budget"),
    "nsga2": ("autoprune.agents.optuna", "OptunaSearch",
              "Optuna NSGA-II: accuracy vs MACs (or latency); best within budget plus the Pareto front"),
    "evolution": ("autoprune.agents.evolution", "EvolutionSearch",
                  "MetaPruning's evolutionary search alone: population 50, top-10 parents, mutation 0.1, "
                  "crossover; every candidate physically pruned and scored"),
    "metapruning": ("autoprune.agents.metapruning", "MetaPruningSearch",
                    "MetaPruning: a PruningNet generates every candidate's weights, evolution searches with them, "
                    "the best are re-scored on the pretrained model"),
    "gnn": ("autoprune.agents.gnn", "GNNSearch",
            "GNN-RL: a GATv2 policy over the network's graph picks all ratios at once, trained by PPO "
            "(stable-baselines3); --init-from warm-starts it from another run"),
}
# fixed constructor arguments of a registered name (one class serves several names)
PRESETS: dict[str, dict] = {
    **{f"sb3:{algo}": {"algo": algo} for algo in ("td3", "sac", "ppo")},
    **{name: {"sampler": name} for name in ("tpe", "cmaes", "qmc", "nsga2")},
    "optuna:random": {"sampler": "random"},
}
DEFAULT_AGENT = "tpe"  # beat random on every seed of ResNet-20 and ResNet-56 at 60 evaluations (bench/results)


def names() -> list[str]:
    return list(REGISTRY)


def resolve(name: str) -> str:
    """`name` as the run records it: a registered name as is; a user's `file.py:Class` with an absolute
    path (Ray workers and `--resume` load the same file from anywhere); refused in one line when it
    names no searcher."""
    searcher_class(name)
    path, sep, cls = name.rpartition(":")
    if name in REGISTRY or not path.endswith(".py"):
        return name
    return f"{Path(path).resolve()}{sep}{cls}"


def label(name: str) -> str:
    """A short name for folders and logs: the registered name, or the user's class name."""
    return name if name in REGISTRY else searcher_class(name).name or name.rpartition(":")[2]


def searcher_class(name: str) -> type[Searcher]:
    """The class behind a registered name, `package.module:Class` or `path/to/file.py:Class`."""
    if name in REGISTRY:
        module, cls, _ = REGISTRY[name]
        return getattr(importlib.import_module(module), cls)
    where, sep, cls_name = name.rpartition(":")
    if not sep or not where or not cls_name:
        raise UserError(f"unknown agent '{name}': one of {', '.join(REGISTRY)}, or your own as "
                        "package.module:Class or path/to/file.py:Class")
    try:
        module = _load_file(Path(where)) if where.endswith(".py") else importlib.import_module(where)
        cls = getattr(module, cls_name)
    except UserError:
        raise
    except Exception as exc:  # the user's module: its own error, in one line
        raise UserError(f"--agent {name}: could not load it: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Searcher)):
        raise UserError(f"--agent {name}: {cls_name} is not a subclass of autoprune.agents.Searcher")
    return cls


def _load_file(path: Path):
    """Import a searcher's .py file once per process (as multiprocessing's spawn does with a script)."""
    path = path.resolve()
    if not path.is_file():
        raise UserError(f"--agent: no such file {path}")
    module_name = f"autoprune_user_{abs(hash(str(path))):x}_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def default_evals(name: str) -> int:
    """`--evals` when none is given: the searcher's `default_evals` (with the name's presets)."""
    return build(name).default_evals


def accepts(name: str, option: str) -> bool:
    """Whether the searcher `name` takes the constructor option `option` (e.g. "reward")."""
    return option in inspect.signature(searcher_class(name)).parameters


def parse_options(name: str, pairs: list[str]) -> dict:
    """`--agent-option KEY=VALUE` strings -> constructor options, each typed like the option's default."""
    signature = inspect.signature(searcher_class(name)).parameters
    params = {k: p for k, p in signature.items() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}
    passthrough = any(p.kind is p.VAR_KEYWORD for p in signature.values())  # sb3:*: the algorithm's own options
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if sep and key not in params and passthrough:
            out[key] = _number(text)
            continue
        if not sep or key not in params:
            raise UserError(f"--agent-option '{pair}': agent '{name}' takes KEY=VALUE with KEY one of "
                            f"{', '.join(params) or 'nothing'}")
        default = params[key].default
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1", "yes")
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                value = type(default)(text)
            elif isinstance(default, tuple):
                value = tuple(int(v) for v in text.split(","))
            elif default is None or isinstance(default, str):  # None: a number if it reads as one
                value = _number(text)
            else:
                value = text
        except ValueError:
            raise UserError(f"--agent-option {key}: '{text}' is not a {type(default).__name__}") from None
        out[key] = value
    return out


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def build(name: str, **kwargs) -> Searcher:
    """An instance of the searcher `name` (see `searcher_class`) with the name's presets and `kwargs`."""
    cls = searcher_class(name)
    try:
        return cls(**{**PRESETS.get(name, {}), **kwargs})
    except UserError:
        raise
    except Exception as exc:
        if name in REGISTRY:
            raise
        raise UserError(f"--agent {name}: {cls.__name__}(...) raised {type(exc).__name__}: {exc}") from None
