"""Measured check of a latency-budgeted search's result: the best candidate that really meets the budget.

The lookup table predicts a policy's latency to within ~5-15% on a CPU like this one
(bench/results/latency_validation-*). A search picks the most accurate candidate that the table puts
within the budget, and among near-equal candidates the ones the table under-predicts are the less pruned,
more accurate ones. So the winner is the candidate most likely to break the budget when measured
(bench/results/netadapt_search-resnet56-random.md: every ResNet-56 winner ran 1.5-3 points of the
unpruned latency over its budget when re-timed). After the search, up to `top` distinct candidates in
reward order are therefore pruned and timed, each `repeats` times interleaved with the unpruned model
(median: one timing on a loaded machine can be off by far more than the table). The first one whose
measurement meets every latency budget is returned. If none does, a second pool of up to `top` is
checked before giving up: the remaining candidates the table puts furthest under the budget, best
reward first among those that pass. A relative budget (`60%latency`) is checked as measured time
over the unpruned model's measured time, so a slow spell of the machine slows both alike. An
absolute one (`12ms`) is checked against the measured milliseconds. When neither pool passes, the
table's error is what stands in the way, and it is measured now: up to `REPROJECT_ROUNDS` rounds
re-project the `REPROJECT_TOP` best candidates under the latency budgets tightened by the median
measured/predicted ratio of the candidates last timed (one point more each round), score the
re-projected policies (`problem.evaluate`: new evaluations, recorded in the study) and time them;
the best-scoring one that passes is returned. A run where no round passes ends with
`UNVERIFIED_EXIT` unless the user accepts it (`--accept-unverified`). The report lists the rounds.
"""
from __future__ import annotations

import copy
import dataclasses
import statistics

import numpy as np

from torch import nn

from autoprune.budget import BudgetSet
from autoprune.cost.measured import median_latencies_ms
from autoprune.problem import EvalResult, Problem, better_first


def latency_budgets(problem: Problem) -> list:
    return [b for b in problem.budgets.budgets if b.metric == "latency_ms"]


def timed_against_base(problem: Problem, ratios, base_model: nn.Module, *, repeats: int = 3, batch: int = 1,
                       device="cpu", threads: int | None = None, min_seconds: float = 1.0,
                       timer=median_latencies_ms) -> dict:
    """The pruned policy and `base_model` timed interleaved, `repeats` times: medians of ms and of their ratio."""
    shape = tuple(problem.space.graph.input_shape)
    pruned = problem.prune(problem.space.snap(ratios))
    timings = [timer([(pruned, shape), (base_model, shape)], batch=batch, device=device, threads=threads,
                     min_seconds=min_seconds, max_seconds=max(5.0, min_seconds), rounds=5)
               for _ in range(max(1, repeats))]
    return {"measured_ms": statistics.median(t[0] for t in timings),
            "unpruned_alongside_ms": statistics.median(t[1] for t in timings),
            "measured_fraction": statistics.median(t[0] / t[1] for t in timings)}


UNVERIFIED_EXIT = 3  # the CLI's exit code when no checked candidate measured within the latency budget
REPROJECT_ROUNDS = 3  # re-projections under a budget tightened by the measured/predicted ratio
REPROJECT_TOP = 3  # best candidates re-projected in each round


def verify_latency(problem: Problem, base_model: nn.Module, *, top: int = 10, **timing) -> tuple[EvalResult, dict]:
    """(the chosen result, a report). With no candidate passing, the search's best and `verified: False`.

    `timing`: `timed_against_base`'s options (repeats, batch, device, threads, min_seconds, timer).
    The report's `chosen` is the returned candidate's own entry among `checked`.
    """
    budgets = latency_budgets(problem)
    candidates = problem.ranked()
    base_copy = copy.deepcopy(base_model)
    top = max(1, top)
    checked: list[dict] = []

    def check(r: EvalResult, pool: int) -> dict:
        t = timed_against_base(problem, r.ratios, base_copy, **timing)
        ok = all(t["measured_fraction"] <= b.relative if b.relative is not None else t["measured_ms"] <= b.target
                 for b in budgets)
        entry = {"evaluation": r.index, "heldout_accuracy": r.accuracy, **t, "pool": pool,
                 "predicted_ms": r.costs["latency_ms"],
                 "predicted_fraction": r.costs["latency_ms"] / problem.base_costs["latency_ms"], "meets_budget": ok}
        checked.append(entry)
        return entry

    chosen = next((r for r in candidates[:top] if check(r, 1)["meets_budget"]), None)
    if chosen is None:  # the table's furthest under budget, of those not yet timed
        rest = sorted(candidates[top:], key=lambda r: (r.costs["latency_ms"], -r.reward))[:top]
        chosen = _most_rewarding([r for r in rest if check(r, 2)["meets_budget"]])
    rounds: list[dict] = []
    while chosen is None and len(rounds) < REPROJECT_ROUNDS:
        last = [c for c in checked if c["pool"] == (rounds[-1]["pool"] if rounds else 1)]
        if not last:  # the previous round had nothing left to time
            break
        tightened = _tightened(problem, budgets, last, margin=0.01 * (len(rounds) + 1))
        pool = 3 + len(rounds)
        rounds.append({"pool": pool, "latency_targets_ms": [b.target for b in tightened if b.metric == "latency_ms"],
                       "measured_over_predicted": [_ratio(last, b) for b in budgets]})
        projected = _reproject(problem, candidates[:REPROJECT_TOP], tightened)
        chosen = _most_rewarding([r for r in projected if check(r, pool)["meets_budget"]])
    verified = chosen is not None
    chosen = chosen if verified else candidates[0]
    report = {"verified": verified, "checked": checked, "budgets": [b.text for b in budgets], "reprojections": rounds,
              "search_best_evaluation": candidates[0].index,
              "chosen": next(c for c in checked if c["evaluation"] == chosen.index)}
    return chosen, report


def _most_rewarding(results: list[EvalResult]) -> EvalResult | None:
    """The best of `results` in `Problem.ranked`'s order (reward, then the earlier evaluation); None if empty."""
    return min(results, key=better_first, default=None)


def _ratio(entries: list[dict], budget) -> float:
    """Median measured over predicted latency of timed candidates, as `budget` counts it: fractions of the
    unpruned model for a relative budget, milliseconds for an absolute one."""
    if budget.relative is not None:
        return float(statistics.median(e["measured_fraction"] / e["predicted_fraction"] for e in entries))
    return float(statistics.median(e["measured_ms"] / e["predicted_ms"] for e in entries))


def _tightened(problem: Problem, budgets: list, entries: list[dict], margin: float) -> list:
    """Every budget, the latency ones divided by the table's measured error at `entries`, less `margin`."""
    factors = {id(b): max(_ratio(entries, b), 1.0) for b in budgets}
    return [dataclasses.replace(b, target=b.target / factors[id(b)] * (1.0 - margin)) if id(b) in factors else b
            for b in problem.budgets.budgets]


def _reproject(problem: Problem, results: list[EvalResult], budgets: list) -> list[EvalResult]:
    """`results`' policies projected onto `budgets` and scored (new evaluations; repeated ones cached)."""
    tight = BudgetSet(budgets, problem.costs, problem.base_costs, problem.space.max_ratios)
    if any(tight.minimum[b.metric] > b.target for b in budgets):  # tighter than the thinnest policy
        return []
    rng = np.random.default_rng(problem.seed)
    seen, out = set(), []
    for r in results:
        scored = problem.evaluate(tight.project(r.ratios, problem.space.snap, problem.space.step, rng))
        if scored is not None and scored.key not in seen:
            seen.add(scored.key)
            out.append(scored)
    return out
