"""AMC's DDPG on stable-baselines3 (and SB3's TD3/SAC/PPO): its parts, determinism, resume, that it
learns (a known-answer problem where it must beat uniform and random search), and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gymnasium import spaces

from autoprune import agents
from autoprune.agents.ddpg import AMCDDPG, DDPGSearch, EpisodeRewardBuffer, SB3Search, TruncatedNormalNoise
from autoprune.envs import LayerPruningEnv
from autoprune.agents import default_evals
from autoprune.study import Study, StudyInfo
from conftest import needs_fashion
from surrogate import race



def test_registered_by_name():
    assert isinstance(agents.build("ddpg"), DDPGSearch)
    for algo in ("td3", "sac", "ppo"):
        searcher = agents.build(f"sb3:{algo}")
        assert isinstance(searcher, SB3Search) and searcher.algo == algo and searcher.name == f"sb3:{algo}"
    assert agents.build("sb3:ppo", n_epochs=2).algo_kwargs == {"n_epochs": 2}
    assert default_evals("ddpg") == 300


def test_truncated_normal_noise_stays_inside_and_is_seeded():
    noise = TruncatedNormalNoise(0.5, seed=3)
    mean = np.array([-1.0, -0.5, 0.0, 0.9, 1.0] * 2000, dtype=np.float32)
    draws = noise.around(mean)
    assert draws.min() >= -1.0 and draws.max() <= 1.0
    assert not np.isin(draws, [-1.0, 1.0]).mean() > 0.001  # truncated, not clipped onto the bounds
    assert np.array_equal(draws, TruncatedNormalNoise(0.5, seed=3).around(mean))
    centre = noise.around(np.zeros(20000))
    assert abs(centre.mean()) < 0.02 and 0.45 < centre.std() < 0.6  # sigma 0.5 -> 1.0 scaled, cut at +-1
    noise.sigma = 0.01
    assert np.abs(noise.around(np.zeros(1000))).max() < 0.1


def test_episode_reward_buffer_broadcasts_final_reward_and_subtracts_baseline():
    obs_space = spaces.Box(0.0, 1.0, (2,), np.float32)
    buf = EpisodeRewardBuffer(100, obs_space, spaces.Box(-1.0, 1.0, (1,), np.float32), "cpu", baseline_alpha=0.5)
    o, a = np.zeros((1, 2), np.float32), np.zeros((1, 1), np.float32)
    for final in (1.0, 3.0):
        for t in range(3):
            done = t == 2
            buf.add(o, o, a, np.array([final if done else 0.0]), np.array([done]), [{}])
    assert buf.rewards[:6, 0].tolist() == [1.0, 1.0, 1.0, 3.0, 3.0, 3.0]
    first = buf._get_samples(np.array([0, 1, 2, 3, 4, 5]))  # batch mean 2 -> baseline 2
    assert buf.baseline == 2.0 and first.rewards.flatten().tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    second = buf._get_samples(np.array([3, 4, 5]))  # mean 3: baseline moves halfway, to 2.5
    assert buf.baseline == 2.5 and second.rewards.flatten().tolist() == [0.5, 0.5, 0.5]


def test_amc_settings_reach_sb3(surrogate_problem):
    problem = surrogate_problem()
    n, warmup, episodes = problem.space.size, 2, 6
    searcher = DDPGSearch(warmup_episodes=warmup)
    searcher.search(problem, episodes, seed=0)
    model = searcher.model
    assert isinstance(model, AMCDDPG) and problem.n_evals == episodes
    assert model.actor.optimizer.param_groups[0]["lr"] == 1e-4  # after training: not overwritten by SB3
    assert model.critic.optimizer.param_groups[0]["lr"] == 1e-3
    assert (model.tau, model.batch_size, model.gamma, model.learning_starts) == (0.01, 64, 1.0, warmup * n)
    assert model.train_freq.frequency == 1 and model.train_freq.unit.value == "episode"
    assert model.gradient_steps == -1 and model.replay_buffer.buffer_size == 100 * n + 1
    linear = [m.out_features for m in model.actor.mu if isinstance(m, torch.nn.Linear)]
    assert linear == [300, 300, 1]
    assert [m.out_features for m in model.critic.qf0 if isinstance(m, torch.nn.Linear)] == [300, 300, 1]
    assert model.action_noise.sigma == pytest.approx(0.5 * 0.95 ** (episodes - warmup))
    # warm-up episodes are uniform random actions, no noise added; later ones the actor's plus noise
    actions = model.replay_buffer.actions[:episodes * n, 0, 0]  # as SB3 stores them: scaled to [-1, 1]
    box = spaces.Box(0.0, 1.0, (1,), np.float32)
    box.seed(0)  # SB3 seeds its action space with the search's seed
    uniform = np.array([box.sample()[0] for _ in range(warmup * n)]) * 2 - 1
    assert np.allclose(actions[:warmup * n], uniform, atol=1e-6)
    assert np.all(np.abs(actions) <= 1.0)
    rewards = model.replay_buffer.rewards[:episodes * n, 0].reshape(episodes, n)
    assert np.all(rewards == rewards[:, -1:])  # every transition carries its episode's final reward
    assert rewards[:, -1] == pytest.approx([
        -(1 - r.accuracy) * np.log(r.costs["macs"]) for r in problem.results], rel=1e-6)


def _keys(problem) -> list[str]:
    return [r.key for r in problem.results]


def test_deterministic_with_the_seed_and_resumable(surrogate_problem, tmp_path):
    def run(seed: int, study: Study | None = None):
        problem = surrogate_problem()
        if study is not None:
            problem.attach_study(study)
        DDPGSearch(warmup_episodes=2).search(problem, 6, seed=seed)
        return problem

    def study(resume: bool) -> Study:
        info = StudyInfo("resnet20", "ddpg", 0, ["50%FLOPs"], surrogate_problem().space.names)
        return Study(f"sqlite:///{tmp_path / 's.db'}", "run", info, list(surrogate_problem().space.max_ratios),
                     resume=resume)

    a, b, c = run(0, study(False)), run(0), run(1)
    assert len(_keys(a)) == 6 and len(set(_keys(a))) == 6
    assert _keys(a) == _keys(b) and [r.accuracy for r in a.results] == [r.accuracy for r in b.results]
    assert _keys(a) != _keys(c)
    resumed = run(0, study(True))  # replay from the seed: every evaluation comes from the study
    assert _keys(resumed) == _keys(a) and all(r.cached for r in resumed.results)
    assert resumed.evaluator.calls == 0


@pytest.mark.parametrize("algo", ["td3", "sac", "ppo"])
def test_sb3_algorithms_run_on_the_env(surrogate_problem, algo):
    problem = surrogate_problem(budgets=("50%FLOPs", "60%params"))
    kwargs = {"learning_starts": 2 * problem.space.size} if algo != "ppo" else {}
    agents.build(f"sb3:{algo}", **kwargs).search(problem, 5, seed=0)
    assert problem.n_evals == 5  # PPO's rollouts are longer: stopped at the evaluations asked for
    assert all(problem.budgets.satisfied(r.costs) for r in problem.results)


# The known answer: accuracy 1 - sum s_g r_g^2, the first half of ResNet-20's 11 groups 100x more
# sensitive than the second. The best policy spares the first half and prunes the second to the
# maximum (~0.954, found greedily below). Uniform pruning cannot (0.35); random search spends the
# budget everywhere (0.60-0.74 in 100 evaluations over 8 seeds); pruning only where the budget wall
# forces it gets 0.929. AMC's DDPG (its defaults, 25 warm-up episodes instead of 100) reached
# 0.952-0.954 on each of seeds 0-7 in 100 episodes (~10 s each on a busy core).
LEARN_EPISODES, LEARN_WARMUP = 100, 25


def _greedy_optimum(problem, s: np.ndarray) -> float:
    """From everything at the max, un-prune the grid step with the best accuracy per MAC while feasible."""
    space, r = problem.space, problem.space.max_ratios.copy()
    while True:
        best = None
        for i in range(space.size):
            c = space.step(r, i, -1)
            if c is not None and problem.feasible(c):
                gain = (s * (r ** 2 - c ** 2)).sum() / max(1.0, space.macs(c) - space.macs(r))
                if best is None or gain > best[0]:
                    best = (gain, c)
        if best is None:
            return float(1.0 - (s * r ** 2).sum())
        r = best[1]


def test_ddpg_learns_a_known_answer(surrogate_problem):
    n = surrogate_problem().space.size
    s = np.where(np.arange(n) < n // 2, 1.0, 0.01)
    optimum = _greedy_optimum(surrogate_problem(sensitivities=s), s)
    wall = surrogate_problem(sensitivities=s)
    env = LayerPruningEnv(wall)
    env.reset()
    for _ in range(n):
        env.step(np.zeros(1, dtype=np.float32))  # prune nothing unless the wall forces it
    results = {"wall": wall, **race(lambda: surrogate_problem(sensitivities=s), (
        ("uniform", agents.build("uniform"), 1), ("random", agents.build("random"), LEARN_EPISODES),
        ("ddpg", DDPGSearch(warmup_episodes=LEARN_WARMUP), LEARN_EPISODES)))}
    best = {k: p.best.accuracy for k, p in results.items()}
    assert best["ddpg"] > best["uniform"] + 0.3, best
    assert best["ddpg"] > best["random"] + 0.1, best
    assert best["ddpg"] > best["wall"] + 0.01, best  # more than the trivial policy
    assert best["ddpg"] > optimum - 0.01, (best, optimum)  # the known answer
    ddpg = np.array([r.accuracy for r in results["ddpg"].results])
    # learning, not luck: its last episodes beat its random warm-up by far, and random search's best
    assert ddpg[-25:].mean() > ddpg[:LEARN_WARMUP].mean() + 0.5, ddpg
    assert ddpg[-25:].mean() > best["random"] + 0.1, (ddpg[-25:].mean(), best)
    r = results["ddpg"].best.ratios
    assert r[s == 1.0].max() < 0.15 and r[s < 1.0].min() > 0.6, r  # it spares the sensitive half


@needs_fashion
def test_cli_search_with_ddpg(tmp_path, fmnist_subset):
    from typer.testing import CliRunner

    from autoprune.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "search", "resnet20", "--agent", "ddpg", "--evals", "3", "--weights", "random", "--heldout", "200",
        "--calib-batches", "2", "--budget", "50%FLOPs", "--data", fmnist_subset, "--out", str(out)])
    assert result.exit_code == 0, result.output
    policy = json.loads((out / "policy.json").read_text())
    assert policy["agent"] == "ddpg" and policy["evaluations"] == 3
    assert policy["macs"] <= 0.5 * policy["base_macs"]
    assert "3/3" in result.output  # the progress bar counted episodes as evaluations
