"""The layer-by-layer env: Gymnasium's checker, AMC's state, the budget wall, rewards, seeding, speed.

Problems come from `surrogate_problem` (conftest): real graphs, spaces, costs and budgets, with a
formula in place of pruning and scoring a network, so every episode costs microseconds.
"""
from __future__ import annotations

import math
import time
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from autoprune.budget import TOLERANCE, parse_budget
from autoprune.envs import LAYER_PRUNING_ID, LayerPruningEnv  # importing registers the id
from autoprune.envs.layerwise import FEATURES
from autoprune.errors import UserError
from autoprune.problem import REWARDS, Problem
from autoprune.search_spaces import UnstructuredSpace
from autoprune.study import Study, StudyInfo
from surrogate import QuadraticAccuracy, RatioSpace


def _episode(env: LayerPruningEnv, actions, seed: int | None = None) -> tuple[list[np.ndarray], float, dict]:
    """Play one episode; returns the observations, the final reward and the final info
    (plus "n_clipped": how many steps the wall raised)."""
    obs, _ = env.reset(seed=seed)
    seen, clipped = [obs], 0
    for i, a in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(np.array([a], dtype=np.float32))
        seen.append(obs)
        clipped += info["clipped"] and i < env.n_steps - 1
        assert not truncated
        assert terminated == (i == env.n_steps - 1)
        if not terminated:
            assert reward == 0.0
    return seen, reward, {**info, "n_clipped": clipped}


def _within_budgets(problem, costs: dict) -> bool:
    return all(costs[b.metric] <= b.target * (1 + 1e-12) for b in problem.budgets.budgets)


def test_registered_and_passes_check_env(surrogate_problem):
    problem = surrogate_problem()
    env = gymnasium.make(LAYER_PRUNING_ID, problem=problem)
    # (the wrappers' `spec` deep-copies the kwargs, the whole problem: read the env's own)
    assert env.unwrapped.spec.id == LAYER_PRUNING_ID and env.unwrapped.problem is problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings count as failures
        check_env(env.unwrapped)
    assert env.observation_space == gymnasium.spaces.Box(0.0, 1.0, (len(FEATURES),), np.float32)
    assert env.action_space == gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)


def test_observation_is_amc_state(surrogate_problem):
    problem = surrogate_problem()
    env = LayerPruningEnv(problem)
    n = env.n_steps
    assert n == problem.space.size == len(problem.space.graph.groups)
    seen, _, _ = _episode(env, np.full(n, 0.3), seed=0)
    obs = np.array(seen)
    col = {f: obs[:, i] for i, f in enumerate(FEATURES)}
    assert obs.dtype == np.float32 and obs.min() >= 0.0 and obs.max() <= 1.0
    assert col["index"][0] == 0.0 and col["index"][n - 1] == 1.0
    assert np.all(np.diff(col["index"][:n]) > 0)
    assert col["reduced"][0] == 0.0 and np.all(np.diff(col["reduced"]) >= 0) and col["reduced"][-1] > 0.4
    assert col["rest"][0] > 0.8 and np.all(np.diff(col["rest"]) <= 0) and col["rest"][-1] == 0.0
    assert col["previous_action"][0] == 0.0 and col["previous_action"][1] == pytest.approx(0.3, abs=0.05)
    # static columns span [0, 1]: min-max normalised over the groups
    for f in ("in_channels", "out_channels", "macs"):
        assert col[f][:n].min() == 0.0 and col[f][:n].max() == 1.0, f
    kinds = {g.kind for g in problem.space.graph.groups}
    assert len(set(col["kind"][:n])) == len(kinds)


@pytest.mark.parametrize("model", ["resnet20", "vgg11", "mobilenetv2"])
def test_wall_keeps_every_episode_within_every_budget(surrogate_problem, model):
    problem = surrogate_problem(model, budgets=("50%FLOPs", "60%params"))
    env = LayerPruningEnv(problem)
    rng = np.random.default_rng(0)
    n, episodes = env.n_steps, 40
    plans = [np.zeros(n), np.ones(n), np.linspace(0, 1, n), np.linspace(1, 0, n)]
    plans += [rng.uniform(0, 1, n) for _ in range(episodes - len(plans))]
    clipped = 0
    for i, plan in enumerate(plans):
        _, _, info = _episode(env, plan, seed=i)
        clipped += info["n_clipped"]
        assert _within_budgets(problem, info["costs"]), (model, i, info["costs"])
        assert np.all(info["ratios"] <= problem.space.max_ratios + 1e-12)
        assert problem.n_evals == i + 1  # every episode is an evaluation, none refused
    # pruning nothing by choice: the wall prunes just enough, and the last group spends the slack
    zero = problem.results[0]
    assert problem.budgets.slack(zero.costs) < 0.05, zero.costs
    assert 0 < clipped < episodes * (n - 1)  # the wall was exercised, and not on every step


def test_finished_policy_is_projected_onto_the_budget(surrogate_problem):
    problem = surrogate_problem()
    full = LayerPruningEnv(problem)  # fill_slack=True (default)
    amc = LayerPruningEnv(problem, fill_slack=False)
    plan = np.ones(full.n_steps)  # prune everything to the max: far below the budget
    _, _, a = _episode(amc, plan)
    _, _, b = _episode(full, plan)
    target = problem.budgets.budgets[0].target
    assert a["costs"]["macs"] < 0.8 * target  # AMC leaves the slack unspent
    assert target * (1 - TOLERANCE) <= b["costs"]["macs"] <= target  # projected: within 0.5% under the target
    assert np.all(b["ratios"] <= a["ratios"] + 1e-9) and b["ratios"].sum() < a["ratios"].sum()
    # a policy already at the target is evaluated as the agent chose it
    _, _, c = _episode(full, b["ratios"] / np.where(full.max_ratios > 0, full.max_ratios, 1))
    assert np.allclose(c["ratios"], b["ratios"])


def test_wall_on_unstructured_space(graphs):
    model, graph = graphs("resnet20")
    space = RatioSpace(UnstructuredSpace(graph, model))
    base = {"macs": graph.base_macs, "params": graph.base_params}
    problem = Problem(model, space, [parse_budget("30%params", base)], QuadraticAccuracy(np.full(space.size, 0.1)))
    env = LayerPruningEnv(problem)
    assert env.n_steps == space.size == len(space.layer_names)
    rng = np.random.default_rng(1)
    for i in range(10):
        _, _, info = _episode(env, rng.uniform(0, 1, env.n_steps), seed=i)
        assert _within_budgets(problem, info["costs"])
    _, _, info = _episode(env, np.zeros(env.n_steps))
    assert problem.budgets.slack(info["costs"]) < TOLERANCE * 4


def test_reward_by_name_or_function(surrogate_problem):
    problem = surrogate_problem()
    plan = np.full(problem.space.size, 0.5)
    rewards = {}
    for name in REWARDS:
        _, rewards[name], info = _episode(LayerPruningEnv(problem, reward=name), plan)
    acc, costs = info["accuracy"], info["costs"]
    assert rewards["accuracy"] == pytest.approx(acc)
    assert rewards["error-log-flops"] == pytest.approx(-(1 - acc) * math.log(costs["macs"]))
    assert rewards["error-log-params"] == pytest.approx(-(1 - acc) * math.log(costs["params"]))
    _, custom, _ = _episode(LayerPruningEnv(problem, reward=lambda a, c: 10 * a - c["params"] / 1e6), plan)
    assert custom == pytest.approx(10 * acc - costs["params"] / 1e6)
    assert LayerPruningEnv(problem).reward_fn is REWARDS["error-log-flops"]  # AMC's default
    with pytest.raises(UserError, match="unknown reward 'nope'.*accuracy"):
        LayerPruningEnv(problem, reward="nope")


def test_final_info_and_study(surrogate_problem, tmp_path):
    problem = surrogate_problem()
    info_ = StudyInfo("resnet20", "ddpg", 0, ["50%FLOPs"], problem.space.names)
    problem.attach_study(Study(f"sqlite:///{tmp_path / 'study.db'}", "run", info_, list(problem.space.max_ratios)))
    env = LayerPruningEnv(problem)
    rng = np.random.default_rng(0)
    plans = [rng.uniform(0, 1, env.n_steps) for _ in range(3)]
    infos = [_episode(env, p)[2] for p in plans + plans[:1]]
    for info, result in zip(infos, problem.results):
        assert set(info) >= {"ratios", "policy", "costs", "accuracy", "evaluation", "cached"}
        assert info["evaluation"] == result.index and info["accuracy"] == result.accuracy
        assert list(info["policy"]) == problem.space.names
        assert np.allclose(list(info["policy"].values()), info["ratios"], atol=1e-6)
        assert info["accuracy"] == pytest.approx(1 - (0.1 * info["ratios"] ** 2).sum())
    assert problem.n_evals == 4 and infos[3]["cached"]  # the repeated policy came from the cache
    assert len(problem.study.records()) == 3


def test_reset_and_steps_are_deterministic(surrogate_problem):
    plan = np.random.default_rng(3).uniform(0, 1, surrogate_problem().space.size)
    runs = []
    for _ in range(2):
        env = LayerPruningEnv(surrogate_problem())
        runs.append(_episode(env, plan, seed=7))
    (obs_a, r_a, info_a), (obs_b, r_b, info_b) = runs
    assert all(np.array_equal(a, b) for a, b in zip(obs_a, obs_b))
    assert r_a == r_b and np.array_equal(info_a["ratios"], info_b["ratios"])
    env = LayerPruningEnv(surrogate_problem())
    first, _ = env.reset(seed=1)
    env.step(np.array([0.9], dtype=np.float32))
    again, _ = env.reset(seed=1)
    assert np.array_equal(first, again) and first is not again


@pytest.mark.parametrize("model", ["resnet20", "mobilenetv2"])
def test_step_overhead_below_1ms(surrogate_problem, model):
    env = LayerPruningEnv(surrogate_problem(model))
    rng = np.random.default_rng(0)
    times = []
    for episode in range(20):
        env.reset(seed=episode)
        for _ in range(env.n_steps - 1):  # the last step evaluates the policy: not overhead
            action = rng.uniform(0, 1, 1).astype(np.float32)
            start = time.perf_counter()
            env.step(action)
            times.append(time.perf_counter() - start)
        env.step(np.array([0.5], dtype=np.float32))
    mean = float(np.mean(times))
    assert mean < 1e-3, f"{model}: {mean * 1e3:.3f} ms per step"
