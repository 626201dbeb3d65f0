"""The one Pareto front: points no other beats in both accuracy (higher) and cost (lower).

NSGA-II's returned front (agents/optuna.py) and the report's accuracy-cost figure both take it.
"""
from __future__ import annotations


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (accuracy max, cost min) points, by increasing cost; duplicates once."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front, best_acc = [], float("-inf")
    for i in order:
        if points[i][0] > best_acc:  # cheaper ones were all less accurate: i is not dominated
            front.append(i)
            best_acc = points[i][0]
    return front
