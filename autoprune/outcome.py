"""The end of a search: which candidate is returned, and what policy.json says about its costs.

The searcher's best is not always the answer. With `--reconstruct-top K` the K best are refitted by
least squares and re-ranked (autoprune.reconstruct); under a latency budget the best candidates are
timed and the first that really meets it is kept (autoprune.verify), and a refitting run scores
that pick refitted too.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from autoprune.problem import EvalResult, Problem, better_first
from autoprune.verify import latency_budgets, verify_latency

log = logging.getLogger(__name__)


def final_pick(problem: Problem, setup, best: EvalResult, stage: Callable[[str], None]) -> tuple[EvalResult, dict]:
    """(the returned candidate, policy.json entries saying how it was chosen)."""
    cfg = setup.config
    reranked, notes = None, {}
    if cfg.reconstruct and cfg.reconstruct_top and problem.ladder is None:  # the ladder refitted from rung 1
        stage(f"refitting the {cfg.reconstruct_top} best candidates by least squares")
        best, reranked = rerank(problem, cfg.reconstruct_top)
    if cfg.verify_latency > 0 and latency_budgets(problem):
        stage(f"timing up to {cfg.verify_latency} best candidates against the latency budget")
        best, notes["latency_verification"] = verify_latency(problem, setup.bundle.model, top=cfg.verify_latency,
                                                             batch=cfg.batch, device=setup.device, threads=cfg.threads)
        if reranked is not None:  # its pick is scored as the others now are: refitted
            best = rescore(problem, best)
    mode = ("ladder rungs 1-2" if problem.ladder is not None else
            f"top-{cfg.reconstruct_top}" if cfg.reconstruct_top else "every candidate")
    notes["reconstruction"] = (None if not cfg.reconstruct else
                               {"mode": mode,
                                **({"reranked": reranked} if reranked else {})})
    return best, notes


def policy_details(problem: Problem, best: EvalResult) -> dict:
    """Latency-table figures of the pick (with a latency budget), kept channels and data-aware channel orders.

    Also the kept channels of uniform pruning at the same budget (the `uniform` searcher's bisection on
    the cost models, no evaluation), which the report draws beside the pick's.
    """
    out = {}
    if "latency_ms" in best.costs:  # the lookup table's prediction, next to the measurement
        lut = problem.cost_models["latency_ms"]
        out.update(predicted_latency_ms=best.costs["latency_ms"],
                   base_predicted_latency_ms=problem.base_costs["latency_ms"],
                   latency_floor_ms=lut.floor_ms, latency_table_check=lut.check)
    if problem.space.kind == "channel":
        out["kept_channels"] = {n: int(k) for n, k in zip(problem.space.names, problem.space.kept(best.ratios))}
        out["group_channels"] = {n: int(c) for n, c in zip(problem.space.names, problem.space.channels)}
        out.update(uniform_reference(problem))
        if problem.channel_orders() is not None:  # a data-aware criterion: which channels go, for `apply`
            out["channel_orders"] = {n: o.tolist() for n, o in zip(problem.space.names, problem.channel_orders())}
    return out


def uniform_reference(problem: Problem) -> dict:
    """`uniform_kept_channels` (and its MACs) of one ratio for all groups that just meets the budgets.

    A reference drawing must not fail a finished search: a failure is logged and the entry left out.
    """
    try:
        ratios = problem.uniform_ratios()
        costs = problem.costs(problem.space.snap(ratios))
        return {"uniform_kept_channels": {n: int(k) for n, k in zip(problem.space.names, problem.space.kept(ratios))},
                "uniform_macs": float(costs["macs"])}
    except Exception:  # noqa: BLE001 - see the docstring
        log.warning("could not compute the uniform-pruning reference for the report", exc_info=True)
        return {}


def rerank(problem, top: int):
    """Re-score the `top` best distinct candidates with reconstruction on; (best of them, one row each).

    From here on the problem refits every model it prunes (`Problem.pruned_model` included).
    """
    candidates = problem.ranked()[:top]
    problem.use_reconstruction()
    scored = [rescore(problem, r) for r in candidates]
    rows = [{"evaluation": r.index, "heldout": r.accuracy, "reconstructed_heldout": s.accuracy}
            for r, s in zip(candidates, scored)]
    return min(scored, key=better_first), rows


def rescore(problem, result):
    """`result` scored again as the problem scores now (reconstruction on): accuracy and reward replaced."""
    acc, _ = problem.score(result.ratios)
    return dataclasses.replace(result, accuracy=acc["top1"], top5=acc.get("top5"),
                               reward=float(problem.reward_fn(acc["top1"], result.costs)))
