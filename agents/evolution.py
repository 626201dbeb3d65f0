"""Evolutionary search over per-group ratios (MetaPruning's search, Liu et al. 2019), and evolution alone.

MetaPruning's loop: a random first population; then, each generation, half the children are
mutations of a random parent among the top-k (every gene redrawn with probability p) and half are
crossovers of two such parents (each gene from either); the top-k are kept across generations.
Defaults as MetaPruning's: population 50, top-10 parents, mutation probability 0.1, 20
generations. Every child is projected onto every budget (`problem.project`: within the budget and
within 0.5% of a FLOPs/params target, as every other searcher's candidates), and a child whose
policy was already scored is drawn again, so no score is spent twice.

`evolve` is the loop with the scorer left open: `EvolutionSearch` (`--agent evolution`) scores a
generation at a time through `problem.evaluate_many` (physical pruning of the pretrained model,
adaptive BN, held-out accuracy), so `--workers N` scores it in parallel; `metapruning.py` scores
with PruningNet-generated weights instead. With fewer evaluations than population x generations,
the population shrinks (never below 10) so that the search still runs ~20 generations.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from autoprune.agents.base import Searcher

POPULATION, PARENTS, MUTATION, GENERATIONS = 50, 10, 0.1, 20
MIN_POPULATION = 10
RETRIES = 20  # draws of a child before a repeat of an already scored policy is accepted as the end


def population_for(evals: int, population: int | None, generations: int) -> int:
    """The population: as asked, else MetaPruning's 50, shrunk so that `evals` cover `generations` of them."""
    if population is not None:
        return max(2, int(population))
    return int(min(POPULATION, max(MIN_POPULATION, evals // generations)))


def evolve(problem, score: Callable[[list[np.ndarray]], list[float | None]], limit: int, *, seed: int,
           population: int, parents: int = PARENTS, mutation: float = MUTATION,
           generations: int = GENERATIONS) -> list[tuple[float, np.ndarray]]:
    """Run the evolution for up to `generations` or `limit` scored candidates; (fitness, ratios), best first.

    `score` gets a generation (projected ratio vectors, distinct policies) and returns one fitness
    per candidate, None for one it could not score.
    """
    rng = np.random.default_rng(seed)
    maxr = np.asarray(problem.space.max_ratios, dtype=np.float64)
    seen: set[str] = set()
    scored: list[tuple[float, np.ndarray]] = []
    k = max(1, min(parents, population))

    def fresh(make: Callable[[], np.ndarray]) -> np.ndarray | None:
        for _ in range(RETRIES):
            r = problem.project(make(), rng)
            key = problem.policy(r).key()
            if key not in seen:
                seen.add(key)
                return r
        return None

    def run(batch: list[np.ndarray]) -> None:
        batch = batch[:max(0, limit - len(scored))]
        for r, f in zip(batch, score(batch) if batch else []):
            if f is not None:
                scored.append((float(f), r))

    run([c for c in (fresh(lambda: rng.uniform(0.0, maxr)) for _ in range(population)) if c is not None])
    for _ in range(generations - 1):
        if len(scored) >= limit or not scored:
            break
        top = [r for _, r in sorted(scored, key=lambda t: -t[0])[:k]]
        children = []
        for i in range(population):
            if i < population // 2:  # mutation: each gene redrawn with probability `mutation`
                def make(p=top[rng.integers(len(top))]):
                    return np.where(rng.random(len(maxr)) < mutation, rng.uniform(0.0, maxr), p)
            else:  # crossover: each gene from either of two parents
                def make():
                    a, b = top[rng.integers(len(top))], top[rng.integers(len(top))]
                    return np.where(rng.random(len(maxr)) < 0.5, a, b)
            child = fresh(make)
            if child is not None:
                children.append(child)
        if not children:
            break
        run(children)
    return sorted(scored, key=lambda t: -t[0])


class EvolutionSearch(Searcher):
    """Evolution alone: MetaPruning's search, every candidate scored through `problem.evaluate_many`."""

    name = "evolution"
    default_evals = 1000
    supports_batch = True  # workers score each generation in parallel; proposals do not depend on them

    def __init__(self, *, population: int | None = None, parents: int = PARENTS, mutation: float = MUTATION,
                 generations: int = GENERATIONS) -> None:
        self.population, self.parents, self.mutation, self.generations = population, parents, mutation, generations

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        def score(batch: list[np.ndarray]) -> list[float | None]:
            return [None if r is None else r.reward for r in problem.evaluate_many(batch)]

        evolve(problem, score, n_evals, seed=seed, population=population_for(n_evals, self.population,
                                                                             self.generations),
               parents=self.parents, mutation=self.mutation, generations=self.generations)
