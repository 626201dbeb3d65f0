"""MetaPruning (Liu et al., ICCV 2019): train a PruningNet, evolve encodings scored with its weights, then
apply the winners to the pretrained model.

1. The PruningNet (`pruningnet.py`) is derived from the run's channel groups and starts equal to
   the pretrained network pruned by the run's criterion; it is trained for `pruningnet_epochs` on
   the training split (`pruningnet.pt` in the run folder after every epoch; `--resume` continues
   an interrupted training), or loaded from `pruningnet` (a file of the same model and groups).
2. Evolution (`evolution.py`, MetaPruning's settings) over per-group ratios projected onto every
   budget; fitness = held-out accuracy of the masked network with PruningNet-generated weights,
   at the evaluator's low fidelity (adaptive BN on 2 calibration batches, a fifth of the held-out
   split: `Evaluator.quick`). The stage's size follows `n_evals`: `proxy_evals` candidates
   (default PROXY_PER_EVAL per evaluation, at most MetaPruning's 50 x 20), population 50 (fewer
   when that leaves under 4 generations). The paper's 1000 candidates at full fidelity took over
   15 minutes on ResNet-20 with `--evals 20` on this 2-core CPU; the count is logged up front and
   the progress bar follows it. Those scores go into the run's study
   marked `scorer: pruningnet`, so neither a resume nor a reader takes them for scores of the
   physically pruned pretrained model (`Problem.record_proxy`).
3. The `n_evals` best candidates by that fitness are applied to the pretrained model (physical
   pruning with the criterion, adaptive BN) and scored through `problem.evaluate_many`: the search's
   result, policy.json, exports and the final table mean what they mean for every other agent.
   `extras` writes the winner with PruningNet-generated weights as well (`pruned_pruningnet.pt`).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.agents.base import Searcher
from autoprune.agents.evolution import GENERATIONS, MIN_POPULATION, MUTATION, PARENTS, POPULATION, evolve
from autoprune.agents.pruningnet import PruningNet, load_checkpoint, structure_key, train_pruningnet, unmasked
from autoprune.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT = "pruningnet.pt"
# PruningNet-scored candidates per evaluation (--evals) by default. 5 keeps `--evals 20 --pruningnet-epochs 1` on
# ResNet-20 within 5 minutes on this 2-core CPU (285 s, 92.50 held-out / 92.13 test) where 10 took 353 s for
# 92.64 / 92.20 (one seed each, quiet machine, 2026-12-04): the same within noise at 60% of the search time.
PROXY_PER_EVAL = 5
MIN_GENERATIONS = 4


class MetaPruningSearch(Searcher):
    """PruningNet + evolution; `n_evals` = the finalists re-scored with the pretrained weights."""

    name = "metapruning"
    default_evals = 5  # finalists re-scored on the pretrained model
    supports_batch = True  # workers score the finalists in parallel
    checkpoint_file = CHECKPOINT

    def __init__(self, *, pruningnet_epochs: int = 2, pruningnet_lr: float = 0.01, pruningnet_batch: int = 128,
                 hidden: int = 32, pruningnet: str | Path | None = None, population: int = POPULATION,
                 parents: int = PARENTS, mutation: float = MUTATION, generations: int = GENERATIONS,
                 proxy_evals: int | None = None) -> None:
        if pruningnet_epochs < 0 or pruningnet_batch < 2:
            raise UserError("--pruningnet-epochs must be >= 0 and the PruningNet batch >= 2")
        self.epochs, self.lr, self.batch_size, self.hidden = pruningnet_epochs, pruningnet_lr, pruningnet_batch, hidden
        self.reuse = Path(pruningnet) if pruningnet is not None else None
        if self.reuse is not None and not self.reuse.is_file():
            raise UserError(f"PruningNet file not found: {self.reuse}")
        self.population, self.parents, self.mutation, self.generations = population, parents, mutation, generations
        if proxy_evals is not None and proxy_evals < 1:
            raise UserError("metapruning's proxy_evals must be at least 1")
        self.proxy_evals = proxy_evals
        self.pnet: PruningNet | None = None
        self.report: dict = {}

    def check_problem(self, problem) -> None:
        """Refusals before anything is written: the space, and a reused PruningNet of another model or graph."""
        if getattr(problem.space, "kind", "channel") != "channel":
            raise UserError("metapruning needs the channel space: a PruningNet generates dense layers' weights")
        if self.reuse is not None:
            load_checkpoint(self.reuse, problem.space.graph)

    def _pruningnet(self, problem, seed: int) -> PruningNet:
        graph = problem.space.graph
        orders = problem.removal_orders()
        state = None
        if self.reuse is not None:
            state = load_checkpoint(self.reuse, graph)
        elif self.checkpoint_path is not None and self.checkpoint_path.is_file():  # --resume: continue training
            state = load_checkpoint(self.checkpoint_path, graph)
        pnet = PruningNet(problem.model, graph, orders, hidden=state["hidden"] if state else self.hidden, seed=seed)
        if state is not None:
            pnet.load_state_dict(state["state_dict"])
        start_epoch = 0 if state is None or self.reuse is not None else int(state["epoch"])
        epochs = 0 if self.reuse is not None else self.epochs
        t = time.perf_counter()
        if start_epoch < epochs:
            trained = train_pruningnet(pnet, problem, epochs=epochs, lr=self.lr, batch_size=self.batch_size, seed=seed,
                                       checkpoint=self.checkpoint_path, start_epoch=start_epoch,
                                       optimizer_state=state.get("optimizer") if state else None,
                                       on_progress=problem.progress)
            self.report["training"] = {k: v for k, v in trained.items()}
        elif self.checkpoint_path is not None and self.reuse is None and epochs == 0:
            from autoprune.agents.pruningnet import save_checkpoint

            save_checkpoint(self.checkpoint_path, pnet, None, 0, 0, {"history": []})
        self.report["pruningnet"] = {"epochs": epochs, "reused": str(self.reuse) if self.reuse else None,
                                     "structure": structure_key(graph), "train_seconds": time.perf_counter() - t}
        return pnet

    def score(self, problem, batch: list[np.ndarray], done: list[int], total: int) -> list[float]:
        """Held-out accuracy of each policy with PruningNet weights (adaptive BN first), recorded as a proxy.

        At the evaluator's low fidelity where it has one (Evaluator.quick), else its full score.
        """
        evaluator = problem.evaluator
        quick = getattr(evaluator, "heldout", None) is not None and evaluator.sliceable()
        out = []
        for ratios in batch:
            stored = problem.proxy_score(ratios, "pruningnet")
            if stored is None:
                net = self.pnet.materialize(problem.space.kept(ratios))
                stored = (evaluator.quick(net) if quick else evaluator(net))["top1"]
                problem.record_proxy(ratios, stored, "pruningnet")
            out.append(stored)
            done[0] += 1
            problem.progress(f"scoring {total} candidates with PruningNet weights", min(done[0], total), total)
        return out

    def stage_size(self, n_evals: int) -> tuple[int, int, int]:
        """(proxy candidates, population, generations) of the evolution stage for `n_evals` evaluations."""
        cap = self.population * self.generations
        proxy = min(cap, self.proxy_evals if self.proxy_evals is not None else PROXY_PER_EVAL * max(1, n_evals))
        population = max(2, min(self.population, max(MIN_POPULATION, proxy // MIN_GENERATIONS)))
        return proxy, population, -(-proxy // population)

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        self.check_problem(problem)
        proxy, population, generations = self.stage_size(n_evals)
        log.info("metapruning: PruningNet %s, then %d candidates scored with its weights (population %d, %d "
                 "generations), then the %d best pruned from the pretrained model and evaluated",
                 "reused" if self.reuse else f"trained {self.epochs} epoch(s)", proxy, population, generations,
                 n_evals)
        self.pnet = self._pruningnet(problem, seed)
        self.pnet.eval()
        t = time.perf_counter()
        done = [0]
        ranked = evolve(problem, lambda b: self.score(problem, b, done, proxy), proxy, seed=seed,
                        population=population, parents=self.parents, mutation=self.mutation,
                        generations=generations)
        self.report["evolution"] = {"candidates": len(ranked), "population": population, "generations": generations,
                                    "seconds": time.perf_counter() - t,
                                    "best_pruningnet_accuracy": ranked[0][0] if ranked else None}
        finalists = [r for _, r in ranked[:max(0, n_evals - problem.n_evals)]]
        problem.evaluate_many(finalists)

    def extras(self, out: Path, ratios: np.ndarray, problem, test) -> dict:
        """policy.json's "pruningnet": the winner with PruningNet-generated weights, physically pruned,
        BN recalibrated, scored and saved (its "file")."""
        from autoprune.evaluate import accuracy
        from autoprune.policy import apply_policy

        kept = problem.space.kept(ratios)
        pruned = apply_policy(unmasked(self.pnet.materialize(kept)), problem.space.graph, kept,
                              orders=problem.removal_orders())
        heldout = problem.evaluator(pruned)["top1"]
        path = out / "pruned_pruningnet.pt"
        torch.save(pruned.cpu(), path)
        return {"pruningnet": {
            **self.report, "heldout_accuracy": heldout, "file": str(path),
            "test_accuracy": None if test is None else accuracy(pruned, test, problem.evaluator.device)["top1"]}}
