"""Every evaluation of a search, stored as a finished trial of an Optuna study.

Optuna's RDB storage gives us a results database for free: a SQLite file in the run folder by
default, PostgreSQL (or any SQLAlchemy URL) with --storage, readable by optuna-dashboard while a
run goes on. A trial holds the ratios as params and costs, accuracy, reward and timings as user
attributes; `records()` gives them back so a resumed run re-uses instead of re-evaluating.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import optuna
from optuna.distributions import FloatDistribution

from autoprune.errors import UserError


@contextlib.contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna's per-trial INFO lines and experimental-API warnings off for our own calls only: the user's
    verbosity and warning filters are as they were afterwards (their own studies keep logging)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)
log = logging.getLogger(__name__)


def public_url(url: str) -> str:
    """The storage URL without its password, fit for a results file or an error message."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: Optuna refuses it with its own message
        return url


@dataclass
class StudyInfo:
    model: str
    agent: str
    seed: int
    budgets: list[str]
    groups: list[str]


class Study:
    def __init__(self, storage: str, name: str, info: StudyInfo, max_ratios: list[float], *,
                 resume: bool = False) -> None:
        where = public_url(storage)
        try:
            existing = optuna.study.get_all_study_names(storage)
        except Exception as exc:  # bad URL, unreachable server, unreadable file, missing driver
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "DB access module" in reason:
                reason += " (for PostgreSQL: pip install 'autoprune[postgres]')"
            raise UserError(f"cannot open study storage {where}: {reason}") from None
        if name in existing and not resume:
            raise UserError(f"study '{name}' already exists in {where}: pass --resume to continue it")
        if name not in existing and resume:
            raise UserError(f"nothing to resume: no study '{name}' in {where}")
        with optuna_quiet():
            self.study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                             load_if_exists=resume)
        self.names = info.groups
        self.distributions = {n: FloatDistribution(0.0, max(float(m), 1e-6)) for n, m in zip(info.groups, max_ratios)}
        if resume:
            stored = self.study.user_attrs
            for key in ("model", "seed", "agent"):
                if stored.get(key) != getattr(info, key):
                    raise UserError(f"cannot resume: the stored run has {key}={stored.get(key)!r}, "
                                    f"this one {getattr(info, key)!r}")
        else:
            for key, value in info.__dict__.items():
                self.study.set_user_attr(key, value)

    def add(self, ratios: list[float], accuracy: float, attrs: dict) -> None:
        params = {n: min(float(r), self.distributions[n].high) for n, r in zip(self.names, ratios)}
        trial = optuna.trial.create_trial(params=params, distributions=self.distributions, value=accuracy,
                                          user_attrs=attrs)
        with optuna_quiet():
            self.study.add_trial(trial)

    def records(self) -> list[dict]:
        """Stored evaluations in the order they were made: user attrs plus 'ratios'."""
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            out.append({**t.user_attrs, "accuracy": t.value})
        return out
