"""The contract between a searcher and the search job (as stable-baselines3's BaseAlgorithm documents its hooks).

A searcher subclasses `Searcher`, sets `name`, and writes `search`: propose ratio vectors and
ask `problem.evaluate` / `evaluate_many` about them until `problem.n_evals` reaches `n_evals`.
The problem keeps the results, the best and the study; the job tests and writes the best.
Everything else below is optional: the defaults do nothing, and the job calls each hook at the
point its docstring names, so a searcher overrides only what it needs.

Same seed, same proposals: `--resume` replays the searcher from its seed while the study
answers the evaluations already made, so a searcher draws its randomness from `seed` only.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np


class Searcher:
    """Base class of every searcher. Hyper-parameters are keyword-only constructor arguments
    (`--agent-option KEY=VALUE` sets them, typed like their defaults)."""

    #: The registry name, shown in logs and policy.json.
    name: ClassVar[str] = ""
    #: `--evals` when the user gives none (an instance may set its own: nsga2 100, the other samplers 60).
    default_evals: int = 60
    #: True when `search` proposes several candidates per `evaluate_many` call, so `--workers N`
    #: can score them in parallel. The job then sets `batch` to N before `search`.
    supports_batch: ClassVar[bool] = False
    #: A file name for state worth keeping across `--resume` (a trained policy network). The job
    #: sets `checkpoint_path` to this name inside the run folder before `search`; a failed fresh
    #: run keeps the file and says how to resume.
    checkpoint_file: ClassVar[str | None] = None

    #: Candidates to propose per `evaluate_many` call (the number of workers); 1 without workers.
    batch: int = 1
    #: Where `checkpoint_file` lives in this run (None outside a run folder, e.g. in tests).
    checkpoint_path: Path | None = None

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        """Propose candidates and score them through `problem` (an `autoprune.problem.SearchProblem`)
        until `problem.n_evals >= n_evals`."""
        raise NotImplementedError(f"{type(self).__name__}.search")

    def check_problem(self, problem) -> None:
        """Refuse a problem this searcher cannot handle, in one line (raise `UserError`).

        Called once the problem is built, before the run folder is made, so refused input leaves
        nothing behind (metapruning: the channel space only; a reused PruningNet must fit).
        """

    def extras(self, out: Path, ratios: np.ndarray, problem, test) -> dict | None:
        """Extra results for the returned policy `ratios`, written by the searcher into the run folder
        `out` after the exports; the dict goes into policy.json under the searcher's name, and its
        "file" entry (if any) is listed with the run's files. `test` is the test split or None.
        None: nothing extra (metapruning: the winner with PruningNet-generated weights)."""
        return None

    def pareto_front(self) -> list[dict]:
        """Non-dominated candidates of a multi-objective search, written to pareto.json
        (each a dict with at least "ratios" and "accuracy"); [] when the searcher has one objective."""
        return []
