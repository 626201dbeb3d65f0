"""A search's progress as plain lines, for where no progress bar draws: a log file, `| tee`, Slurm, CI,
and the Python API's `autoprune` logger.

A line every `every` evaluations (default a twentieth of the search) and, from a timer thread, at
least once a minute while nothing else was said -- a PruningNet epoch or a slow evaluation never
looks like a hung process. Each line: the stage, evaluations done of the total, best so far,
elapsed time and the ETA at the pace so far.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


def best_so_far(problem) -> str:
    """"best held-out 0.9123 @ 49.8% MACs" (with the ladder, the rung it reached; the top rung is fine-tuned)."""
    best = problem.best
    if best is None:
        return ""
    rung = "" if best.rung is None else f" (rung {best.rung})"
    return f"best held-out{rung} {best.accuracy:.4f} @ {best.costs['macs'] / problem.base_costs['macs']:.1%} MACs"


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLines:
    """Callbacks for `search_job.execute_search` (on_result, on_stage, on_progress) that `emit` text lines.

    Use as a context manager: the at-least-once-a-minute timer runs inside the block.
    """

    def __init__(self, total: int, emit: Callable[[str], None], *, every: int | None = None,
                 every_seconds: float = 60.0) -> None:
        self.total, self.emit = total, emit
        self.every = every or max(1, total // 20)
        self.every_seconds = every_seconds
        self.done, self.best, self.stage_text, self.step = 0, "", "searching", ""
        self.start = time.monotonic()
        self.last = self.start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        eta = clock(elapsed / self.done * (self.total - self.done)) if 0 < self.done < self.total else "-"
        parts = [f"{self.stage_text}{f' ({self.step})' if self.step else ''}",
                 f"{self.done}/{self.total} evaluations", self.best, f"elapsed {clock(elapsed)}", f"ETA {eta}"]
        return " | ".join(p for p in parts if p)

    def _say(self) -> None:
        with self._lock:
            self.last = time.monotonic()
            text = self.line()
        self.emit(text)

    def on_result(self, result, problem) -> None:
        self.done, self.best = problem.n_evals, best_so_far(problem)
        if self.done % self.every == 0 or self.done == self.total:
            self._say()

    def on_stage(self, text: str) -> None:
        self.stage_text, self.step = text, ""
        self._say()

    def on_progress(self, what: str, done: int, total: int) -> None:
        """A searcher's own step (metapruning's PruningNet training): said by the timer, not per step."""
        self.step = f"{what} {done}/{total}"

    def _tick(self) -> None:
        while not self._stop.wait(min(5.0, self.every_seconds)):
            if time.monotonic() - self.last >= self.every_seconds:
                self._say()

    def __enter__(self) -> ProgressLines:
        self._thread = threading.Thread(target=self._tick, name="autoprune-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
