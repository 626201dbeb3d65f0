"""Parallel evaluation inside one search: Ray actors, each with its own model and held-out tensors.

Each worker rebuilds the run's problem from its `SearchConfig` -- the same model (weights, or
seeded random init), the same held-out split and calibration batches (both carved by the seed),
the same graph and search space -- so what is shipped to a worker is the small config once, and
per evaluation only a ratio vector out and an accuracy back. Nothing big crosses the wire: on a
cluster each node needs the package, the dataset at the same path (or the same download) and the
weights file, which is what `--data`/`--weights` already name.

The driver keeps the one study: `Problem.evaluate_many` sends the new policies of a batch here and
records the answers in proposal order, so results do not depend on the number of workers.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from autoprune.errors import UserError

log = logging.getLogger(__name__)


def _score_worker_class():
    import ray

    @ray.remote(num_cpus=1)
    class ScoreWorker:
        """One evaluator: the problem rebuilt from the run's config, scoring with `threads` torch threads."""

        def __init__(self, cfg, threads: int, inputs=None) -> None:
            import torch

            from autoprune.job_setup import build_setup

            torch.set_num_threads(threads)
            self.problem = build_setup(cfg, inputs=inputs).problem

        def score(self, ratios: np.ndarray):
            return self.problem.score(np.asarray(ratios, dtype=np.float64))

    return ScoreWorker


class WorkerPool:
    """`n` Ray actors scoring policies; results come back in the order they were sent."""

    def __init__(self, cfg, n: int, *, threads: int = 1, address: str | None = None, inputs=None) -> None:
        try:
            import ray
            from ray.util import ActorPool
        except ImportError as exc:  # pragma: no cover - ray is a dependency
            raise UserError(f"--workers needs Ray: {exc}") from None
        self._started_ray = False
        if not ray.is_initialized():
            # a local Ray with just the CPUs the workers use; --address joins a cluster instead
            kwargs = {} if address else {"num_cpus": max(n * threads, 1)}
            connect_ray(address, "--ray-address", include_dashboard=False, log_to_driver=False,
                        configure_logging=False, **kwargs)
            self._started_ray = True
        cls = _score_worker_class().options(num_cpus=threads)
        # the Python API's model and data objects travel once per actor (Ray pickles them); names need nothing
        self.actors = [cls.remote(cfg, threads, inputs) for _ in range(n)]
        self.pool = ActorPool(self.actors)
        self.n, self.threads = n, threads

    def score(self, batch: list[np.ndarray]) -> list[tuple[dict, dict[str, float]]]:
        return list(self.pool.map(lambda actor, r: actor.score.remote(r), batch))

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect_ray(address: str | None, flag: str, **kwargs) -> None:
    """ray.init(address, **kwargs) (address None: a local Ray), after `check_ray_address`."""
    import ray

    check_ray_address(address, flag)
    ray.init(**({"address": address} if address else {}), **kwargs)


def check_ray_address(address: str | None, flag: str) -> None:
    """A HOST:PORT that does not answer is bad input: one line naming it and what to check.

    Asked with a plain TCP connect, because ray.init itself retries for minutes (measured: still
    waiting after 5 min on a closed port), printing C++ warnings all the while.
    """
    host, sep, port = (address or "").rpartition(":")
    if not (address and sep and port.isdigit() and "://" not in address):
        return  # None, "auto", ray:// client addresses: Ray's own handling
    import socket

    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {flag} {address} ({exc.strerror or exc}): check that "
                        "`ray start --head` runs there, that HOST:PORT is its GCS address (default port 6379) "
                        "and that no firewall blocks it") from exc


RAY_CONNECT_TIMEOUT_S = 5.0


def default_threads(workers: int) -> int:
    """Torch threads per worker: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))
