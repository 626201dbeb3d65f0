"""The fidelity ladder: candidates climb from a cheap score to a short fine-tune by successive halving.

What a user keeps is the pruned model's accuracy *after fine-tuning*; the adaptive-BN score every
searcher optimises only ranks that with Spearman 0.75-0.83 (bench/results/metapruning_validity-*).
The ladder spends fine-tuning only on candidates that earned it. Rungs, cheapest first:

0. ``quick``: a cheap refit (when the run refits: 64 images, 1024 rows per layer), BN on the first
   2 calibration batches, top-1 on a fifth of the held-out split (Evaluator.quick). Without any
   refit a ResNet-20 at 30% FLOPs scores near chance here, which ranks nothing;
1. ``full``: the full score -- least-squares refit (when the run refits), adaptive BN on every
   calibration batch, the whole held-out split;
2. ``finetune``: the rung-1 model trained for `steps` SGD steps on the training split (distilled
   from the unpruned model with `distill`), then the whole held-out split. With `steps=0` there is
   no such rung and the full score is the top.

A candidate goes up a rung when its reward there ranks in the top 1/eta of every reward seen at
that rung so far, this batch's included: Optuna's SuccessiveHalvingPruner rule (asynchronous
successive halving; the first candidates always climb, as Optuna promotes its first eta - 1 trials).
Pooling a whole batch before deciding makes it racing inside the batch for the population
searchers (random, evolution, gnn, metapruning). Optuna's samplers instead pass their own
`promote` (trial.report at step eta**rung, then trial.should_prune) so Optuna's pruner decides.

A result's accuracy and reward are those of the highest rung it reached; `Problem.best` is the best
among the candidates at the highest rung any candidate reached.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # the ladder climbs through the problem's own scoring; the problem imports this module
    from autoprune.problem import Problem

RUNGS = ("quick", "full", "finetune")
TOP = len(RUNGS) - 1  # the top rung of a ladder with a fine-tune

Promote = Callable[[int, float], bool]  # (rung just scored, reward there) -> climb to the next rung?


@dataclass
class Ladder:
    eta: int = 3  # keep the top 1/eta at each rung
    steps: int = 50  # SGD steps of the top rung's fine-tune; 0: no fine-tune rung
    distill: bool = False  # the top rung distils from the unpruned model (KL, T=4, weight 0.5)
    lr: float = 0.01  # cosine from this, as `autoprune finetune`
    batch_size: int = 128
    seed: int = 0
    data: object = None  # the DataBundle whose training split the top rung trains on
    rewards: list[list[float]] = field(default_factory=list)  # every reward seen, per rung

    def __post_init__(self) -> None:
        if self.eta < 2:
            raise ValueError("the ladder's eta must be at least 2")
        if self.steps < 0:
            raise ValueError("the ladder's fine-tune steps must be 0 (no fine-tune rung) or more")
        self.rewards = self.rewards or [[] for _ in range(self.top + 1)]

    @property
    def top(self) -> int:
        """The highest rung: the fine-tune, or the full score when `steps` is 0."""
        return TOP if self.steps else TOP - 1

    def seen(self, rung_rewards: list[float]) -> None:
        """Record a candidate's rewards at the rungs it reached (a fresh score, or a stored one on resume)."""
        for rung, reward in enumerate(rung_rewards):
            self.rewards[rung].append(float(reward))

    def promotable(self, rung: int, reward: float) -> bool:
        """Optuna's rule: `reward` is within the top len(pool) // eta of this rung's pool (its own included)."""
        pool = sorted(self.rewards[rung], reverse=True)
        k = max(1, len(pool) // self.eta)
        return reward >= pool[min(k, len(pool)) - 1]

    def finetune(self, model: nn.Module, teacher: nn.Module | None, device: torch.device) -> float:
        """Train `model` in place for `steps` SGD steps on the training split; returns seconds."""
        from autoprune.train import TrainConfig, train

        start = time.perf_counter()
        cfg = TrainConfig(epochs=10**6, lr=self.lr, batch_size=self.batch_size, schedule="cosine", seed=self.seed,
                          teacher=teacher if self.distill else None, max_steps=self.steps)
        train(model, replace(self.data, heldout=None, test=None), cfg, device)
        return time.perf_counter() - start

    def describe(self) -> dict:
        return {"eta": self.eta, "steps": self.steps, "distill": self.distill, "lr": self.lr,
                "batch_size": self.batch_size, "rungs": list(RUNGS[:self.top + 1]),
                "candidates_per_rung": [len(r) for r in self.rewards]}


def climb(problem: Problem, batch: list[tuple[np.ndarray, dict[str, float]]],
          judges: list) -> list[tuple[dict, dict[str, float]]]:
    """Problem.evaluate_many's fresh policies on `problem.ladder`: every policy of the batch scored at rung 0,
    then the rung's winners -- by `judges` where given, else the ladder's rule over the pool of this rung --
    scored at the next. Returns (accuracy dict with its rung and per-rung accuracies, seconds) per policy."""
    ladder = problem.ladder
    accs: list[list[float]] = [[] for _ in batch]
    seconds = [dict.fromkeys(("prune", "reconstruct", "forward", "finetune"), 0.0) for _ in batch]
    top5: list = [None] * len(batch)
    models: dict[int, nn.Module] = {}
    alive = list(range(len(batch)))
    for rung in range(ladder.top + 1):
        for i in alive:
            acc, models[i] = _score_rung(problem, batch[i][0], rung, models.get(i), seconds[i])
            accs[i].append(acc["top1"])
            top5[i] = acc.get("top5")
        rewards = {i: float(problem.reward_fn(accs[i][-1], batch[i][1])) for i in alive}
        for i in alive:
            ladder.rewards[rung].append(rewards[i])
        if rung == ladder.top:
            break
        alive = [i for i in alive
                 if (judges[i](rung, rewards[i]) if judges[i] is not None else ladder.promotable(rung, rewards[i]))]
        for i in list(models):  # only the climbers' models are needed further up
            if i not in alive:
                del models[i]
    return [({"top1": a[-1], "top5": top5[i], "rung": len(a) - 1, "rung_accuracy": a}, seconds[i])
            for i, a in enumerate(accs)]


def _score_rung(problem: Problem, ratios: np.ndarray, rung: int, model: nn.Module | None,
                seconds: dict[str, float]) -> tuple[dict, nn.Module]:
    """(accuracy dict, the model) of one policy at one rung; rung 2 trains rung 1's `model` further."""
    t0 = time.perf_counter()
    if rung == 0:
        model = problem.prune(ratios)
        t1 = time.perf_counter()
        if problem.reconstructor is not None:
            problem.reconstructor(model, problem.space.kept(ratios), quick=True)
        t2 = time.perf_counter()
        acc = problem.evaluator.quick(model)
        seconds["prune"] += t1 - t0
        seconds["reconstruct"] += t2 - t1
        seconds["forward"] += time.perf_counter() - t2
    elif rung == 1:
        acc, s = problem.score(ratios, keep=True)
        model = acc.pop("model")
        for k, v in s.items():
            seconds[k] += v
    else:
        seconds["finetune"] += problem.ladder.finetune(model, problem.model, problem.evaluator.device)
        t1 = time.perf_counter()
        acc = problem.evaluator(model, recalibrate=False)
        seconds["forward"] += time.perf_counter() - t1
    return acc, model
