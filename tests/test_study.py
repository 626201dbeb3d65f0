"""The results store: Optuna RDB storage by URL. PostgreSQL is tested against a real server when
AUTOPRUNE_TEST_POSTGRES holds its URL (`.ci/run` starts one with scripts/postgres_for_tests.sh)."""
from __future__ import annotations

import os
import uuid

import optuna
import pytest

from autoprune.errors import UserError
from autoprune.study import Study, StudyInfo, public_url

INFO = StudyInfo(model="tiny", agent="random", seed=0, budgets=["50%FLOPs"], groups=["a", "b"])
POSTGRES = os.environ.get("AUTOPRUNE_TEST_POSTGRES")


def test_unreachable_storage_is_one_line_without_the_password():
    url = "postgresql://someone:s3cret@127.0.0.1:1/nowhere"  # nothing listens on port 1
    with pytest.raises(UserError) as err:
        Study(url, "run", INFO, [0.8, 0.8])
    message = str(err.value)
    assert "s3cret" not in message and "\n" not in message
    assert message.startswith("cannot open study storage postgresql://someone:***@127.0.0.1:1/nowhere")
    assert public_url("sqlite:///runs/x/study.db") == "sqlite:///runs/x/study.db"


@pytest.mark.skipif(not POSTGRES, reason="AUTOPRUNE_TEST_POSTGRES (a PostgreSQL URL) is not set")
def test_study_round_trip_on_postgresql():
    name = f"test-{uuid.uuid4().hex[:12]}"
    try:
        study = Study(POSTGRES, name, INFO, [0.8, 0.5])
        study.add([0.3, 0.7], 0.81, {"ratios": [0.3, 0.7], "macs": 1.5e6})  # 0.7 is stored capped at 0.5
        study.add([0.1, 0.2], 0.84, {"ratios": [0.1, 0.2], "macs": 2.5e6})
        with pytest.raises(UserError, match="already exists .*pass --resume"):
            Study(POSTGRES, name, INFO, [0.8, 0.5])
        with pytest.raises(UserError, match="cannot resume: the stored run has seed=0"):
            Study(POSTGRES, name, StudyInfo(**{**INFO.__dict__, "seed": 1}), [0.8, 0.5], resume=True)
        resumed = Study(POSTGRES, name, INFO, [0.8, 0.5], resume=True)
        assert [(r["ratios"], r["macs"], r["accuracy"]) for r in resumed.records()] == [
            ([0.3, 0.7], 1.5e6, 0.81), ([0.1, 0.2], 2.5e6, 0.84)]
        assert optuna.load_study(study_name=name, storage=POSTGRES).best_trial.params == {"a": 0.1, "b": 0.2}
    finally:
        if name in optuna.study.get_all_study_names(POSTGRES):
            optuna.delete_study(study_name=name, storage=POSTGRES)
