"""The problem: model + graph + search space + cost models + budgets + evaluator + study.

`Problem.evaluate(ratios)` is the single door every searcher walks through: it snaps the ratios
to the space's grid, checks every budget, returns a cached result when the same policy was seen
(in this run or, on resume, in the study), otherwise prunes a copy of the model, recalibrates
BN, scores it on the held-out split, and records the result in the study.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from autoprune.budget import Budget, BudgetSet
from autoprune.cost import CostModel, analytic_cost_models
from autoprune.errors import UserError
from autoprune.evaluate import Evaluator
from autoprune.ladder import climb
from autoprune.policy import Policy
from autoprune.study import Study

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    index: int  # evaluation number in this run (0-based)
    ratios: np.ndarray
    key: str
    costs: dict[str, float]
    accuracy: float  # held-out top-1
    top5: float | None
    reward: float
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    partial: bool = False  # scored at low fidelity only (--fidelity auto): never the best
    rung: int | None = None  # the fidelity ladder's highest rung this candidate reached (autoprune.ladder)
    rung_accuracy: list[float] | None = None  # its held-out score at each rung it reached


def better_first(result: EvalResult) -> tuple[float, int]:
    """The one result order: higher reward first, ties to the earlier evaluation (sort or min by it)."""
    return -result.reward, result.index


REWARDS: dict[str, Callable[[float, dict[str, float]], float]] = {
    "accuracy": lambda acc, costs: acc,
    # AMC's -Error*log(FLOPs): prefers accurate *and* cheap policies when the budget is loose
    "error-log-flops": lambda acc, costs: -(1.0 - acc) * math.log(costs["macs"]),
    "error-log-params": lambda acc, costs: -(1.0 - acc) * math.log(costs["params"]),
}


def reward_function(reward: str | Callable[[float, dict[str, float]], float]) -> Callable:
    """A reward by registry name (`REWARDS`) or the user's fn(accuracy, costs)."""
    if callable(reward):
        return reward
    if reward not in REWARDS:
        raise UserError(f"unknown reward '{reward}': one of {', '.join(REWARDS)} or a function(accuracy, costs)")
    return REWARDS[reward]


class Problem:
    """Built whole by its constructor; what a searcher may use is `SearchProblem` (autoprune.search_problem).

    `train` is the training split for data-aware criteria and searchers that train something of their
    own (metapruning); `fidelity` "auto" stops hopeless candidates early (Evaluator.staged), a `ladder`
    (autoprune.ladder) makes candidates climb rungs by successive halving; `reconstruct` refits every
    pruned model by least squares before it is scored (autoprune.reconstruct).
    """

    def __init__(self, model: nn.Module, space, budgets: list[Budget], evaluator: Evaluator, *,
                 study: Study | None = None, criterion: str = "l2", reward: str | Callable = "accuracy",
                 cost_models: dict[str, CostModel] | None = None, seed: int = 0, train=None,
                 fidelity: str = "full", ladder=None, reconstruct: bool = False) -> None:
        self.model, self.space, self.evaluator, self.study = model, space, evaluator, study
        self.criterion, self.seed, self.train = criterion, seed, train
        self.cost_models = cost_models or analytic_cost_models(space)
        self.reward_fn = REWARDS[reward] if isinstance(reward, str) else reward
        zeros = np.zeros(space.size)
        self.base_costs = self.costs(zeros)
        self.budgets = BudgetSet(budgets, self.costs, self.base_costs, space.max_ratios)
        self.budgets.check_feasible()
        self.results: list[EvalResult] = []
        self.callbacks: list[Callable[[EvalResult], None]] = []
        self._cache: dict[str, EvalResult] = {}
        self._stored: dict[str, dict] = {}
        self._proxy: dict[tuple[str, str], float] = {}
        self._orders: list | None = None
        self.reconstructor = None  # use_reconstruction(): every pruned model refitted before scoring
        self.fidelity = fidelity  # "auto": Evaluator.staged stops candidates that cannot reach the best so far
        self.ladder = ladder  # an autoprune.ladder.Ladder (fidelity "ladder"): candidates climb rungs by halving
        if study is not None:
            self.attach_study(study)
        self.timing = {"prune": 0.0, "reconstruct": 0.0, "forward": 0.0, "finetune": 0.0, "other": 0.0}
        self.pool = None  # a WorkerPool (autoprune.workers) scores new policies in parallel: `scoring_on`
        self._progress: list[Callable[[str, int, int], None]] = []
        if reconstruct:
            self.use_reconstruction()

    def on_result(self, callback: Callable[[EvalResult], None]) -> None:
        """Call `callback(result)` after every evaluation, cached ones included."""
        self.callbacks.append(callback)

    def on_progress(self, callback: Callable[[str, int, int], None]) -> None:
        """Call `callback(what, done, total)` when a searcher reports a stage of its own (`progress`)."""
        self._progress.append(callback)

    def progress(self, what: str, done: int, total: int) -> None:
        """A searcher's own stage (metapruning: training the PruningNet, scoring proxies) for the progress line."""
        for callback in self._progress:
            callback(what, done, total)

    @contextlib.contextmanager
    def scoring_on(self, pool) -> Iterator[None]:
        """New policies are scored on `pool` (a WorkerPool) inside the block, in this process after it."""
        self.pool = pool
        try:
            yield
        finally:
            self.pool = None

    def attach_study(self, study: Study) -> None:
        """Record into `study` from now on; its stored evaluations answer repeated policies.

        Scores of another scorer (a proxy such as MetaPruning's PruningNet) are kept apart: they answer
        `proxy_score`, never `evaluate`.
        """
        self.study = study
        records = study.records()
        self._stored = {r["key"]: r for r in records if r.get("scorer", "pruned") == "pruned"}
        self._proxy = {(r["scorer"], r["key"]): r["accuracy"] for r in records if r.get("scorer", "pruned") != "pruned"}

    def proxy_score(self, ratios: np.ndarray, scorer: str) -> float | None:
        """A stored proxy score of this policy (this run or, on resume, the study), else None."""
        return self._proxy.get((scorer, self.policy(self.space.snap(ratios)).key()))

    def record_proxy(self, ratios: np.ndarray, accuracy: float, scorer: str) -> None:
        """Store a score that is not `evaluate`'s (e.g. PruningNet weights) in the study, marked by its scorer."""
        ratios = self.space.snap(np.asarray(ratios, dtype=np.float64))
        key = self.policy(ratios).key()
        self._proxy[(scorer, key)] = float(accuracy)
        if self.study is not None:
            self.study.add(list(ratios), float(accuracy), {"key": key, "scorer": scorer,
                                                           "ratios": [float(r) for r in ratios], **self.costs(ratios)})

    @property
    def n_evals(self) -> int:
        return len(self.results)

    def costs(self, ratios: np.ndarray) -> dict[str, float]:
        return {m: cm.cost(ratios) for m, cm in self.cost_models.items()}

    def feasible(self, ratios: np.ndarray) -> bool:
        return self.budgets.satisfied(self.costs(self.space.snap(ratios)))

    def project(self, ratios: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The nearest policy along `ratios`' direction that meets every budget (see BudgetSet.project)."""
        return self.budgets.project(ratios, self.space.snap, self.space.step, rng)

    @property
    def best(self) -> EvalResult | None:
        """The best full-fidelity result (a partial score is an estimate on a slice, never reported)."""
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def ranked(self) -> list[EvalResult]:
        """Distinct policies that can be returned, best reward first (ties: the earlier evaluation).

        Those are the full-fidelity ones; with the ladder, the ones at the highest rung any candidate
        reached (rewards of different rungs are not comparable).
        """
        eligible = [r for r in self.results if not r.partial]
        if self.ladder is not None and eligible:
            top = max(r.rung or 0 for r in eligible)
            eligible = [r for r in eligible if (r.rung or 0) == top]
        seen, out = set(), []
        for r in sorted(eligible, key=better_first):
            if r.key not in seen:
                seen.add(r.key)
                out.append(r)
        return out

    def uniform_ratios(self) -> np.ndarray:
        """One ratio u for every group (capped at each group's max), bisected to the least pruning that meets
        every budget. It asks only the cost models, never the evaluator: the `uniform` searcher returns it,
        and the report draws it beside every search's pick (autoprune.outcome)."""
        maxr = self.space.max_ratios
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.feasible(np.minimum(mid, maxr)):
                hi = mid
            else:
                lo = mid
        return self.project(np.minimum(hi, maxr), None)

    def policy(self, ratios: np.ndarray) -> Policy:
        return Policy(dict(zip(self.space.names, (round(float(r), 6) for r in self.space.snap(ratios)))))

    def evaluate(self, ratios: np.ndarray) -> EvalResult | None:
        """Score a policy; None (and nothing recorded) when it breaks a budget."""
        return self.evaluate_many([ratios])[0]

    def evaluate_many(self, batch: list[np.ndarray], promote: list | None = None) -> list[EvalResult | None]:
        """Score several policies; the new ones in parallel when a worker pool is attached.

        Results are recorded in the order given, exactly as if each had gone through `evaluate`
        (same indices, same study, same cache hits), so a deterministic proposer gets the same run
        with any number of workers. With the fidelity ladder, `promote` may give one
        `(rung, reward) -> bool` per policy that decides its climbs instead of the ladder's own rule
        (Optuna's pruner, for the Optuna samplers).
        """
        t0 = time.perf_counter()
        prepared = [self._prepare(r) for r in batch]
        fresh: dict[str, tuple[np.ndarray, dict[str, float]]] = {}
        judges: dict[str, object] = {}
        for i, p in enumerate(prepared):
            if p is not None and p[1] not in self._cache and p[1] not in self._stored:
                fresh.setdefault(p[1], (p[0], p[2]))
                if promote is not None:
                    judges.setdefault(p[1], promote[i])
        t1 = time.perf_counter()
        if self.ladder is not None:
            scores = dict(zip(fresh, climb(self, list(fresh.values()), [judges.get(k) for k in fresh])))
        else:
            scores = dict(zip(fresh, self._score_all(list(fresh.values()))))
        t2 = time.perf_counter()
        out: list[EvalResult | None] = []
        for p in prepared:
            if p is None:
                out.append(None)
                continue
            ratios, key, costs = p
            if key in self._cache:
                result = self._replay(self._cache[key])
            elif key in self._stored:
                stored = self._stored[key]
                result = EvalResult(self.n_evals, ratios, key, costs, stored["accuracy"], stored.get("top5"),
                                    stored["reward"], stored.get("seconds", {}), cached=True,
                                    partial=stored.get("fidelity") == "partial", rung=stored.get("rung"),
                                    rung_accuracy=stored.get("rung_accuracy"))
                if self.ladder is not None and result.rung_accuracy:  # a resumed run: the pools as they were
                    self.ladder.seen([self.reward_fn(a, costs) for a in result.rung_accuracy])
            else:
                result = self._record(ratios, key, costs, *scores[key])
            self._cache.setdefault(key, result)
            self.results.append(result)
            out.append(result)
            for cb in self.callbacks:
                cb(result)
        if fresh:  # preparing and recording, shared by the fresh evaluations of this batch
            other = (t1 - t0) + (time.perf_counter() - t2)
            self.timing["other"] += other
            for key in fresh:
                self._cache[key].seconds["other"] = other / len(fresh)
        return out

    def _prepare(self, ratios: np.ndarray) -> tuple[np.ndarray, str, dict[str, float]] | None:
        """(snapped ratios, policy key, costs), or None when the policy breaks a budget."""
        ratios = self.space.snap(np.asarray(ratios, dtype=np.float64))
        costs = self.costs(ratios)
        if not self.budgets.satisfied(costs):
            return None
        return ratios, self.policy(ratios).key(), costs

    def _score_all(self, batch: list[tuple[np.ndarray, dict[str, float]]]) -> list[tuple[dict, dict[str, float]]]:
        """(accuracy dict, seconds) of each (ratios, costs): in this process, or on the attached worker pool.

        At --fidelity auto a candidate stops early when even the upper confidence bound of its
        low-fidelity accuracy gives a lower reward than the best full-fidelity result so far.
        """
        if self.pool is not None and batch:
            return self.pool.score([ratios for ratios, _ in batch])
        if self.fidelity != "auto":
            return [self.score(ratios) for ratios, _ in batch]
        out, best = [], self.best
        top = best.reward if best is not None else None
        for ratios, costs in batch:
            acc, seconds = self.score(ratios, stop=lambda ucb, c=costs, t=top: t is not None and self.reward_fn(ucb, c) < t)
            if not acc.get("partial"):
                reward = float(self.reward_fn(acc["top1"], costs))
                top = reward if top is None else max(top, reward)
            out.append((acc, seconds))
        return out

    def score(self, ratios: np.ndarray, stop: Callable[[float], bool] | None = None,
              keep: bool = False) -> tuple[dict, dict[str, float]]:
        """Prune a copy and evaluate it: (accuracy dict, seconds). No cache, no study: workers call this.

        With `stop`, the evaluator scores in stages (Evaluator.staged) and may return a partial score.
        """
        t1 = time.perf_counter()
        pruned = self.prune(ratios)
        t2 = time.perf_counter()
        if self.reconstructor is not None:
            self.reconstructor(pruned, self.space.kept(ratios))
        t3 = time.perf_counter()
        acc = self.evaluator(pruned) if stop is None else self.evaluator.staged(pruned, stop)
        if keep:  # the ladder trains this very model at its next rung
            acc = acc | {"model": pruned}
        return acc, {"prune": t2 - t1, "reconstruct": t3 - t2, "forward": time.perf_counter() - t3}

    def _record(self, ratios: np.ndarray, key: str, costs: dict[str, float], acc: dict,
                seconds: dict[str, float]) -> EvalResult:
        reward = float(self.reward_fn(acc["top1"], costs))
        partial = bool(acc.get("partial"))
        result = EvalResult(self.n_evals, ratios, key, costs, acc["top1"], acc.get("top5"), reward, dict(seconds),
                            partial=partial, rung=acc.get("rung"), rung_accuracy=acc.get("rung_accuracy"))
        if self.study is not None:
            self.study.add(list(ratios), acc["top1"], {
                "key": key, "index": result.index, "ratios": [float(r) for r in ratios], **costs,
                "top5": acc.get("top5"), "reward": reward, "seconds": seconds,
                **({"fidelity": "partial", "images": acc.get("images")} if partial else {}),
                **({"rung": result.rung, "rung_accuracy": result.rung_accuracy} if result.rung is not None else {})})
        self.timing["prune"] += seconds.get("prune", 0.0)
        self.timing["reconstruct"] += seconds.get("reconstruct", 0.0)
        self.timing["forward"] += seconds.get("forward", 0.0)
        self.timing["finetune"] += seconds.get("finetune", 0.0)
        return result

    def _replay(self, r: EvalResult) -> EvalResult:
        return EvalResult(self.n_evals, r.ratios, r.key, r.costs, r.accuracy, r.top5, r.reward, r.seconds, cached=True,
                          partial=r.partial, rung=r.rung, rung_accuracy=r.rung_accuracy)

    def overhead_share(self) -> float:
        """Share of evaluation time spent beyond forward passes (pruning, costing, storing)."""
        total = sum(self.timing.values())
        return (self.timing["prune"] + self.timing["other"]) / total if total else 0.0

    def prune(self, ratios: np.ndarray) -> nn.Module:
        """A physically pruned copy of the model (no BN recalibration), channels chosen by the criterion."""
        orders = self.removal_orders() if self.reconstructor is not None else self.channel_orders()
        extra = {"orders": orders} if orders is not None else {}
        return self.space.apply(self.model, ratios, criterion=self.criterion, seed=self.seed, **extra)

    def channel_orders(self) -> list | None:
        """Removal order per group for a data-aware criterion (scored once on training batches); else None."""
        from autoprune.importance import DATA_CRITERIA

        return self.removal_orders() if self.criterion in DATA_CRITERIA else None

    def removal_orders(self) -> list:
        """Every group's removal order under the run's criterion, computed once per run."""
        from autoprune.importance import DATA_CRITERIA, labelled_batches
        from autoprune.policy import removal_orders

        if self._orders is None:
            batches = None
            if self.criterion in DATA_CRITERIA:
                if self.train is None:
                    raise UserError(f"criterion '{self.criterion}' needs the training split (problem.train)")
                batches = labelled_batches(self.train, seed=self.seed)
            self._orders = removal_orders(self.model, self.space.graph, criterion=self.criterion, seed=self.seed,
                                          batches=batches)
        return self._orders

    def use_reconstruction(self, on: bool = True) -> None:
        """Refit every pruned model by least squares to the unpruned one's outputs (autoprune.reconstruct)."""
        from autoprune.reconstruct import Reconstructor

        if getattr(self.space, "kind", "channel") != "channel":
            raise UserError("--reconstruct refits the layers of physically pruned models: it needs the channel space")
        self.reconstructor = (Reconstructor(self.model, self.space.graph, self.removal_orders(), self.evaluator.calib,
                                            self.evaluator.device, self.seed) if on else None)

    def pruned_model(self, ratios: np.ndarray) -> nn.Module:
        """The physically pruned model of `ratios` with BN recalibrated, ready to test or export."""
        ratios = self.space.snap(ratios)
        pruned = self.prune(ratios)
        if self.reconstructor is not None:
            self.reconstructor(pruned, self.space.kept(ratios))
        self.evaluator(pruned)
        return pruned
