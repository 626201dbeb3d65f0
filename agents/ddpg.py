"""AMC's DDPG agent (He et al. 2018) on stable-baselines3, and SB3's TD3/SAC/PPO on the same env.

One episode of `LayerPruningEnv` is one policy and one `problem.evaluate`, so "episodes" and
"evaluations" are the same count; the search stops when the problem has `n_evals` of them.

What AMC needs beyond SB3's stock DDPG, each kept as small as SB3 allows:

- separate learning rates (actor 1e-4, critic 1e-3): SB3 has one `learning_rate`, and
  `TD3.train` calls `self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])`
  with that one schedule at every training round, overwriting any per-optimizer rate a custom
  policy would set. `AMCDDPG` overrides `_update_learning_rate` to re-set the actor's rate.
- warm-up of uniform random actions *without* noise, then truncated-normal noise around the
  actor's action: SB3 adds `action_noise()` to warm-up samples too, and an `ActionNoise` never sees
  the action, so it can only clip (piling mass on the bounds), not truncate. `AMCDDPG` overrides
  `_sample_action` for both; `TruncatedNormalNoise` is an ordinary `ActionNoise` otherwise.
- sigma decaying x0.95 per episode after warm-up: `NoiseDecay`, a callback at episode ends.
- every transition of an episode rewarded with the episode's final reward minus a moving-average
  baseline: `EpisodeRewardBuffer` rewrites the episode's rewards when it ends and subtracts the
  baseline (updated from each sampled batch's mean, alpha 0.5, as AMC's code does) at sampling.
  Training runs once per finished episode (`train_freq=(1, "episode")`, one gradient step per
  transition collected, as AMC), so a batch never sees an episode whose reward is not written yet.

Networks are tiny (11 inputs, 300-300): they run on the CPU (device "cpu"), where a GPU's launch
latency would cost more than it saves and the results stay bit-reproducible.
"""
from __future__ import annotations

import logging
import numpy as np
import torch as th
from stable_baselines3 import DDPG, PPO, SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import update_learning_rate

from autoprune.agents.base import Searcher
from autoprune.envs.layerwise import DEFAULT_REWARD, LayerPruningEnv, RewardFn

log = logging.getLogger(__name__)


class TruncatedNormalNoise(ActionNoise):
    """AMC's exploration: a normal around the action, resampled until it falls inside the bounds.

    `sigma` is in the env's action units (a [0, 1] ratio share); SB3 adds noise to actions scaled
    to [-1, 1], so the scaled sigma is twice that. Draws come from its own seeded generator.
    """

    def __init__(self, sigma: float, *, scale: float = 2.0, seed: int = 0, dim: int = 1) -> None:
        super().__init__()
        self.sigma, self.scale, self.dim = sigma, scale, dim
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:  # plain (untruncated) noise, for agents that only add it
        return (self.rng.normal(0.0, self.sigma * self.scale, self.dim)).astype(np.float32)

    def around(self, mean: np.ndarray, low: float = -1.0, high: float = 1.0) -> np.ndarray:
        """Samples of N(mean, sigma) truncated to [low, high] (scaled units), by rejection."""
        mean = np.asarray(mean, dtype=np.float64)
        out = mean.copy()
        todo = np.ones(mean.shape, dtype=bool)
        for _ in range(100):  # acceptance >= ~1/3 even at a bound with sigma = 1 scaled
            draw = self.rng.normal(mean, self.sigma * self.scale)
            ok = todo & (draw >= low) & (draw <= high)
            out[ok] = draw[ok]
            todo &= ~ok
            if not todo.any():
                break
        return np.clip(out, low, high).astype(np.float32)

    def __repr__(self) -> str:
        return f"TruncatedNormalNoise(sigma={self.sigma:.4g})"


class NoiseDecay(BaseCallback):
    """Multiply the noise's sigma by `decay` after every episode that ended past the warm-up."""

    def __init__(self, noise: TruncatedNormalNoise, decay: float, warmup_steps: int) -> None:
        super().__init__()
        self.noise, self.decay, self.warmup_steps = noise, decay, warmup_steps

    def _on_step(self) -> bool:
        if self.locals["dones"][0] and self.num_timesteps > self.warmup_steps:
            self.noise.sigma *= self.decay
        return True


class StopAtEvals(BaseCallback):
    """Stop learning once the problem holds `n_evals` evaluations (episodes), whatever the algo."""

    def __init__(self, problem, n_evals: int) -> None:
        super().__init__()
        self.problem, self.n_evals = problem, n_evals

    def _on_step(self) -> bool:
        return self.problem.n_evals < self.n_evals


class EpisodeRewardBuffer(ReplayBuffer):
    """Replay buffer giving each transition its episode's final reward, minus a moving baseline."""

    def __init__(self, *args, baseline_alpha: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.baseline_alpha = baseline_alpha
        self.baseline: float | None = None
        self._episode: list[int] = []

    def add(self, obs, next_obs, action, reward, done, infos) -> None:
        self._episode.append(self.pos)
        super().add(obs, next_obs, action, reward, done, infos)
        if np.asarray(done).reshape(-1)[0]:
            self.rewards[self._episode, 0] = float(np.asarray(reward).reshape(-1)[0])
            self._episode = []

    def _get_samples(self, batch_inds: np.ndarray, env=None) -> ReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        mean = float(samples.rewards.mean())
        self.baseline = mean if self.baseline is None else self.baseline + self.baseline_alpha * (mean - self.baseline)
        return samples._replace(rewards=samples.rewards - self.baseline)


class AMCDDPG(DDPG):
    """SB3's DDPG with AMC's separate actor rate and its noise-free warm-up / truncated noise."""

    def __init__(self, *args, actor_learning_rate: float = 1e-4, **kwargs) -> None:
        self.actor_learning_rate = actor_learning_rate
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        update_learning_rate(self.actor.optimizer, self.actor_learning_rate)

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        super()._update_learning_rate(optimizers)  # both at `learning_rate` (the critic's)
        update_learning_rate(self.actor.optimizer, self.actor_learning_rate)

    def _sample_action(self, learning_starts: int, action_noise: ActionNoise | None = None,
                       n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        warmup = self.num_timesteps < learning_starts
        if warmup or not isinstance(action_noise, TruncatedNormalNoise):
            return super()._sample_action(learning_starts, None if warmup else action_noise, n_envs)
        _, scaled = super()._sample_action(learning_starts, None, n_envs)  # the actor's action, scaled
        scaled = action_noise.around(scaled)
        return self.policy.unscale_action(scaled), scaled


def _episodes_and_env(problem, n_evals: int, reward, fill_slack: bool) -> tuple[int, LayerPruningEnv | None]:
    """Episodes still owed (one per evaluation) and the env to run them in; no env when none are."""
    episodes = max(0, n_evals - problem.n_evals)
    return episodes, (LayerPruningEnv(problem, reward=reward, fill_slack=fill_slack) if episodes else None)


class DDPGSearch(Searcher):
    """AMC: DDPG over the layer-by-layer env, AMC's hyper-parameters as defaults."""

    name = "ddpg"
    default_evals = 300  # episodes, as AMC

    def __init__(self, *, warmup_episodes: int = 100, hidden: tuple[int, ...] = (300, 300),
                 actor_lr: float = 1e-4, critic_lr: float = 1e-3, tau: float = 0.01, batch_size: int = 64,
                 gamma: float = 1.0, sigma: float = 0.5, sigma_decay: float = 0.95, baseline_alpha: float = 0.5,
                 buffer_episodes: int = 100, reward: str | RewardFn = DEFAULT_REWARD,
                 fill_slack: bool = True, device: str = "cpu") -> None:
        self.warmup_episodes, self.hidden = warmup_episodes, list(hidden)
        self.actor_lr, self.critic_lr, self.tau = actor_lr, critic_lr, tau
        self.batch_size, self.gamma = batch_size, gamma
        self.sigma, self.sigma_decay, self.baseline_alpha = sigma, sigma_decay, baseline_alpha
        self.buffer_episodes, self.reward, self.fill_slack, self.device = buffer_episodes, reward, fill_slack, device
        self.model: AMCDDPG | None = None  # kept for inspection after a search

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        episodes, env = _episodes_and_env(problem, n_evals, self.reward, self.fill_slack)
        if env is None:
            return
        n = env.n_steps
        noise = TruncatedNormalNoise(self.sigma, seed=seed)
        warmup = self.warmup_episodes * n
        buffer = self.buffer_episodes * n + 1  # AMC's replay memory: the last 100 episodes' transitions
        self.model = AMCDDPG(
            "MlpPolicy", env, learning_rate=self.critic_lr, actor_learning_rate=self.actor_lr,
            buffer_size=buffer, learning_starts=warmup, batch_size=self.batch_size, tau=self.tau,
            gamma=self.gamma, train_freq=(1, "episode"), gradient_steps=-1, action_noise=noise,
            replay_buffer_class=EpisodeRewardBuffer, replay_buffer_kwargs={"baseline_alpha": self.baseline_alpha},
            policy_kwargs={"net_arch": {"pi": self.hidden, "qf": self.hidden}}, seed=seed, device=self.device)
        log.info("ddpg: %d episodes of %d steps, %d warm-up", episodes, n, min(episodes, self.warmup_episodes))
        # exactly `episodes` episodes (off-policy learn stops at total_timesteps, no rollout overshoot)
        self.model.learn(total_timesteps=episodes * n, callback=NoiseDecay(noise, self.sigma_decay, warmup))


ALGOS = {"td3": TD3, "sac": SAC, "ppo": PPO}


class SB3Search(Searcher):
    """Any of SB3's TD3 / SAC / PPO on the same env (`--agent sb3:ppo`), SB3's defaults otherwise.

    Departures from SB3's defaults, each because of the env: gamma 1 (a fixed-length episode with
    one terminal reward: discounting would only rescale it); a replay buffer no larger than the
    search; TD3 gets N(0, 0.1) exploration noise (SB3's TD3 has none by default); PPO collects 8
    episodes per update in mini-batches of 2 episodes (its 2048-step default would update a
    300-episode search only a few times). `algo_kwargs` override any of them.
    """

    default_evals = 300

    def __init__(self, algo: str = "ppo", *, reward: str | RewardFn = DEFAULT_REWARD, fill_slack: bool = True,
                 device: str = "cpu", **algo_kwargs) -> None:
        if algo not in ALGOS:
            raise ValueError(f"unknown SB3 algorithm '{algo}': one of {', '.join(ALGOS)}")
        self.algo, self.reward, self.fill_slack, self.device = algo, reward, fill_slack, device
        self.algo_kwargs = algo_kwargs
        self.name = f"sb3:{algo}"
        self.model = None

    def _defaults(self, n: int, episodes: int) -> dict:
        if self.algo == "ppo":
            return {"gamma": 1.0, "n_steps": 8 * n, "batch_size": 2 * n}
        defaults: dict = {"gamma": 1.0, "buffer_size": episodes * n + 1}
        if self.algo == "td3":
            defaults["action_noise"] = NormalActionNoise(np.zeros(1), np.full(1, 0.1))
        return defaults

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        episodes, env = _episodes_and_env(problem, n_evals, self.reward, self.fill_slack)
        if env is None:
            return
        n = env.n_steps
        kwargs = {**self._defaults(n, episodes), **self.algo_kwargs}
        self.model = ALGOS[self.algo]("MlpPolicy", env, seed=seed, device=self.device, **kwargs)
        log.info("%s: %d episodes of %d steps", self.name, episodes, n)
        # PPO collects whole rollouts: the callback, not total_timesteps, ends it at n_evals
        self.model.learn(total_timesteps=episodes * n, callback=StopAtEvals(problem, n_evals))
