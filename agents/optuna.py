"""Optuna's samplers as searchers: TPE, CMA-ES, random, quasi-Monte Carlo and NSGA-II.

One float parameter per prunable group in [0, that group's max ratio], proposed through Optuna's
ask/tell. The sampler's own study lives in memory; every evaluation lands in the engine's study
(the run's SQLite/PostgreSQL storage) through `problem.evaluate`, like every other searcher's,
so optuna-dashboard on the run's storage URL shows the run as it goes, and `--resume` replays the
sampler from the seed with stored evaluations answering (same seed, same suggestions).

Budgets by **projection**, not `constraints_func`: Optuna's constraints only steer sampling
towards feasible regions -- infeasible candidates are still proposed, and each would either waste
an evaluation or need skipping, which breaks ask/tell bookkeeping. Projection (scale the ratios
together, then undo single grid steps, see `BudgetSet.project`) turns every suggestion x into a
policy p(x) within 0.5% under the target, so every evaluated candidate is within budget and spends
it fully. p is deterministic, so to the sampler f(p(x)) is an ordinary black-box objective of x.

NSGA-II is multi-objective: held-out accuracy (maximise) against a cost (minimise: MACs, or
latency when a latency cost model is present). A suggestion is projected only when it breaks a
budget, so candidates spread over the whole range below it; the search returns the best policy
within budget and the non-dominated front (`pareto_front`).

With `batch > 1` (parallel workers) several trials are asked before any is told; TPE then uses
Optuna's constant liar so the batch does not collapse onto one point.

With the fidelity ladder (`--fidelity ladder`, autoprune.ladder) Optuna's own
SuccessiveHalvingPruner decides the climbs of the single-objective samplers: each rung's reward is
reported at step eta**rung (the resource a rung stands for) and the trial climbs while
`should_prune()` says no; a trial stopped below the top rung is told PRUNED, which TPE ranks below
every completed one. NSGA-II (multi-objective, which Optuna's pruners do not serve) leaves the
climbs to the ladder's own rule.
"""
from __future__ import annotations

import logging

import numpy as np
import optuna

from autoprune.agents.base import Searcher
from autoprune.pareto import pareto_front
from autoprune.study import optuna_quiet

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "cmaes", "random", "qmc", "nsga2")
MAX_POPULATION = 50  # Optuna's NSGA-II default


def make_sampler(kind: str, seed: int, n_evals: int, batch: int = 1) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of a name, seeded; settings for a budget of tens to hundreds of trials."""
    if kind == "tpe":
        # multivariate: the groups interact through the budget; 10 random trials before modelling
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(1, n_evals // 5)),
                                          constant_liar=batch > 1)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=0, warn_independent_sampling=False)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False)
    if kind == "nsga2":
        population = int(min(MAX_POPULATION, max(4, n_evals // 4)))  # at least ~4 generations
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    raise ValueError(f"unknown Optuna sampler '{kind}': one of {', '.join(SAMPLERS)}")


def _judge(trial: optuna.Trial, eta: int):
    """The ladder's `promote` for one trial: report the rung's reward, climb unless Optuna's pruner says stop."""
    def climb(rung: int, reward: float) -> bool:
        trial.report(reward, step=eta ** rung)
        return not trial.should_prune()

    return climb


def _reported(study: optuna.Study) -> set[int]:
    """Numbers of the running trials that reported an intermediate value (their climb went through `_judge`)."""
    return {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if t.intermediate_values}


class OptunaSearch(Searcher):
    """An Optuna sampler proposing one ratio per group; candidates projected onto the budget."""

    supports_batch = True  # asks `batch` trials at once (TPE: constant liar)

    def __init__(self, sampler: str = "tpe", *, objective: str | None = None, batch: int = 1) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown Optuna sampler '{sampler}': one of {', '.join(SAMPLERS)}")
        self.sampler, self.objective, self.batch = sampler, objective, max(1, int(batch))
        self.name = sampler if sampler != "random" else "optuna:random"
        self.front: list[dict] = []  # nsga2: the non-dominated candidates
        self.default_evals = 100 if sampler == "nsga2" else 60
        self.study: optuna.Study | None = None

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        with optuna_quiet():  # Optuna's per-trial lines and experimental warnings: ours only
            self._search(problem, n_evals, seed)

    def _search(self, problem, n_evals: int, seed: int) -> None:
        multi = self.sampler == "nsga2"
        cost_metric = self.objective or ("latency_ms" if "latency_ms" in problem.cost_models else "macs")
        sampler = make_sampler(self.sampler, seed, n_evals, self.batch)
        ladder = getattr(problem, "ladder", None)
        pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=ladder.eta,
                                                         min_early_stopping_rate=0)
                  if ladder is not None and not multi else None)
        study = optuna.create_study(sampler=sampler, pruner=pruner,
                                    directions=["maximize", "minimize"] if multi else ["maximize"])
        self.study = study
        names, highs = problem.space.names, problem.space.max_ratios
        distributions = {n: optuna.distributions.FloatDistribution(0.0, max(float(h), 1e-6))
                         for n, h in zip(names, highs)}
        evaluate_many = getattr(problem, "evaluate_many", None)
        rng = np.random.default_rng(seed)  # tie-breaking in the projection's grid refinement
        while problem.n_evals < n_evals:
            k = min(self.batch, n_evals - problem.n_evals)
            trials = [study.ask(distributions) for _ in range(k)]
            xs = [np.array([t.params[n] for n in names]) for t in trials]
            candidates = [x if multi and problem.feasible(x) else problem.project(x, rng) for x in xs]
            if pruner is not None:
                results = evaluate_many(candidates, promote=[_judge(t, ladder.eta) for t in trials])
            else:
                results = evaluate_many(candidates) if evaluate_many else [problem.evaluate(c) for c in candidates]
            for trial, result in zip(trials, results):
                if result is None:  # the projection guarantees the budget; keep the sampler honest anyway
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    continue
                trial.set_user_attr("evaluation", result.index)
                if pruner is not None and result.rung < len(ladder.rewards) - 1:
                    if trial.number not in _reported(study):  # a repeated policy: its climb as first scored
                        trial.report(result.reward, step=ladder.eta ** result.rung)
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    continue
                study.tell(trial, [result.reward, result.costs[cost_metric]] if multi else result.reward)
        if multi:
            self.front = self._front(problem, cost_metric)

    def pareto_front(self) -> list[dict]:
        return self.front

    @staticmethod
    def _front(problem, metric: str) -> list[dict]:
        """The non-dominated evaluated policies (accuracy vs `metric`), cheapest first."""
        first: dict = {}
        for r in problem.results:  # a repeated policy (cache hit) is one point
            first.setdefault(r.key, r)
        unique = list(first.values())
        idx = pareto_front([(r.accuracy, r.costs[metric]) for r in unique])
        return [{"evaluation": unique[i].index, "accuracy": unique[i].accuracy, "costs": dict(unique[i].costs),
                 "ratios": problem.policy(unique[i].ratios).ratios} for i in idx]
