"""GNN-RL (Yu et al., ICML 2022): a graph neural network over the network's DAG picks every group's
ratio at once, trained by PPO; one trained policy can start the search on another network.

The policy (`GraphActorCritic`): node features (`gnn_graph.py`) -> a linear embedding -> three
GATv2 message-passing layers with residual connections and LayerNorm -> per-node embeddings; the
graph embedding is their mean and max (`global_mean_pool`, `global_max_pool`). A per-node action
head reads [node, graph] embeddings and gives two logits, averaged over the nodes of each group
(coupled layers vote together) into the concentrations of a Beta distribution per group -- the
ratio's share of the group's maximum. A value head reads the graph embedding. No weight has the
network's size in it, which is what lets one policy act on a network of any depth.

Why GATv2Conv: attention weighs a node's neighbours (the two inputs of a residual add, the
branches of a concatenation) instead of averaging them as SAGEConv does, it takes the edge
attributes (which way the data flows, how far an edge skips) that GINConv cannot, and GATv2's
dynamic attention ranks neighbours per query node, which GAT's static attention cannot.

Why stable-baselines3's PPO with a custom `ActorCriticPolicy`: the graph is constant for one
network and only the action varies, so the policy carries the graph itself and the observation is
a constant placeholder; SB3 then supplies PPO's rollout buffer, advantage normalisation, clipped
objective, value loss and optimisation loop unchanged. One step = one episode = one whole policy:
SB3 collects a rollout from `rollout` parallel one-step episodes of `ProposalVecEnv`, which projects
every proposal onto the budget (`problem.project`, as the Optuna samplers' suggestions are) and
scores the batch through `problem.evaluate_many`, so `--workers N` evaluates it in parallel; the
rollout size does not follow the worker count, so any number of workers gives the same run. The
agent's reward is the env's (-Error*log(FLOPs) by default).

The policy (GNN weights, the feature set and the hyper-parameters) is saved in the run folder
after every update (`gnn_policy.pt`); `init_from` loads one to warm-start the search on another
network.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecEnv
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import GATv2Conv, global_max_pool, global_mean_pool
from torch_geometric.utils import scatter

from autoprune.agents.base import Searcher
from autoprune.agents.ddpg import StopAtEvals
from autoprune.agents.gnn_graph import EDGE_FEATURES, FEATURE_SET, FEATURES, to_data
from autoprune.envs.layerwise import DEFAULT_REWARD, RewardFn, reward_function
from autoprune.errors import UserError
from autoprune.saved import load_versioned, save_atomic

log = logging.getLogger(__name__)

POLICY_FORMAT, POLICY_VERSION = "autoprune.gnn-policy", 1
POLICY_FILE = "gnn_policy.pt"
EPS = 1e-4  # Beta samples kept inside (0, 1): the log-density is infinite on the bounds


class GraphActorCritic(nn.Module):
    """GATv2 encoder -> per-group Beta concentrations (action head pooled per group) and a value."""

    def __init__(self, hidden: int = 64, layers: int = 3, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(len(FEATURES), hidden)
        self.convs = nn.ModuleList(GATv2Conv(hidden, hidden // heads, heads=heads, edge_dim=len(EDGE_FEATURES))
                                   for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.action_head = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        self.value_head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        # start at Beta(2, 2) in every group: mean 0.5, sd 0.22, whatever the network (softplus(b) + 1 = 2)
        last = self.action_head[-1]
        nn.init.normal_(last.weight, std=0.01)
        nn.init.constant_(last.bias, math.log(math.e - 1))

    def forward(self, data: Data) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """(alpha, beta) of every action, each (num_actions,), and the value, shape (1,)."""
        h = th.relu(self.embed(data.x))
        for conv, norm in zip(self.convs, self.norms):
            h = norm(h + th.relu(conv(h, data.edge_index, data.edge_attr)))
        g = th.cat([global_mean_pool(h, None), global_max_pool(h, None)], dim=1)  # (1, 2 * hidden)
        logits = self.action_head(th.cat([h, g.expand(len(h), -1)], dim=1))
        acting = data.action >= 0
        pooled = scatter(logits[acting], data.action[acting], dim=0, dim_size=data.num_actions, reduce="mean")
        concentration = 1.0 + nn.functional.softplus(pooled)  # >= 1: unimodal
        return concentration[:, 0], concentration[:, 1], self.value_head(g).reshape(1)


class BetaDistribution(Distribution):
    """Independent Beta per action dimension, in SB3's `Distribution` interface."""

    def __init__(self, action_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim

    def proba_distribution_net(self, *args, **kwargs):  # the GNN makes the parameters
        raise NotImplementedError("the GNN policy produces the Beta parameters itself")

    def proba_distribution(self, alpha: th.Tensor, beta: th.Tensor) -> BetaDistribution:
        self.distribution = th.distributions.Beta(alpha, beta)
        return self

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        return self.distribution.log_prob(actions.clamp(EPS, 1 - EPS)).sum(dim=-1)

    def entropy(self) -> th.Tensor:
        return self.distribution.entropy().sum(dim=-1)

    def sample(self) -> th.Tensor:
        return self.distribution.sample().clamp(EPS, 1 - EPS)

    def mode(self) -> th.Tensor:
        return self.distribution.mean

    def actions_from_params(self, alpha, beta, deterministic: bool = False) -> th.Tensor:
        self.proba_distribution(alpha, beta)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(self, alpha, beta) -> tuple[th.Tensor, th.Tensor]:
        actions = self.actions_from_params(alpha, beta)
        return actions, self.log_prob(actions)


class GraphPolicy(ActorCriticPolicy):
    """SB3 actor-critic whose networks are one `GraphActorCritic` over a fixed graph (`data`).

    Observations are a constant placeholder: every row of a batch gets the same distribution and
    value, computed once per call.
    """

    def __init__(self, observation_space, action_space, lr_schedule, *, data: Data, hidden: int = 64,
                 layers: int = 3, heads: int = 4, **kwargs) -> None:
        self.data, self.gnn_kwargs = data, {"hidden": hidden, "layers": layers, "heads": heads}
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule) -> None:
        self.gnn = GraphActorCritic(**self.gnn_kwargs)
        self.beta_dist = BetaDistribution(int(self.action_space.shape[0]))
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _dist_and_value(self) -> tuple[BetaDistribution, th.Tensor]:
        alpha, beta, value = self.gnn(self.data)
        return self.beta_dist.proba_distribution(alpha, beta), value

    def forward(self, obs: th.Tensor, deterministic: bool = False):
        dist, value = self._dist_and_value()
        n = obs.shape[0]
        if deterministic:
            actions = dist.mode().expand(n, -1)
        else:
            actions = dist.distribution.sample((n,)).clamp(EPS, 1 - EPS)
        return actions, value.expand(n).reshape(n, 1), dist.log_prob(actions)

    def evaluate_actions(self, obs: th.Tensor, actions: th.Tensor):
        dist, value = self._dist_and_value()
        n = obs.shape[0]
        return value.expand(n).reshape(n, 1), dist.log_prob(actions), dist.entropy().expand(n)

    def get_distribution(self, obs: th.Tensor) -> Distribution:
        return self._dist_and_value()[0]

    def predict_values(self, obs: th.Tensor) -> th.Tensor:
        return self._dist_and_value()[1].expand(obs.shape[0]).reshape(-1, 1)

    def _predict(self, observation: th.Tensor, deterministic: bool = False) -> th.Tensor:
        return self.forward(observation, deterministic)[0]


class ProposalVecEnv(VecEnv):
    """`n_envs` one-step episodes at a time: each action (shares of every group's maximum ratio) is
    projected onto the budget and the batch is scored by `problem.evaluate_many`. Stops short at
    `n_evals`: the left-over slots of the last rollout get reward 0, and `StopAtEvals` ends learning
    before any update sees them."""

    def __init__(self, problem, n_envs: int, n_evals: int, reward: RewardFn, seed: int) -> None:
        self.problem, self.n_evals, self.reward = problem, n_evals, reward
        self.max_ratios = np.asarray(problem.space.max_ratios, dtype=np.float64)
        self.rng = np.random.default_rng(seed)  # tie-breaking in the projection's grid refinement
        self.project_seconds = 0.0
        self.render_mode = None  # nothing to render; SB3 asks
        super().__init__(n_envs, spaces.Box(0.0, 1.0, (1,), np.float32),
                         spaces.Box(0.0, 1.0, (problem.space.size,), np.float32))
        self._actions = np.zeros((n_envs, problem.space.size))

    def reset(self):
        return np.zeros((self.num_envs, 1), dtype=np.float32)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float64)

    def step_wait(self):
        import time

        k = max(0, min(self.num_envs, self.n_evals - self.problem.n_evals))
        t = time.perf_counter()
        candidates = [self.problem.project(np.clip(a, 0.0, 1.0) * self.max_ratios, self.rng) for a in self._actions[:k]]
        self.project_seconds += time.perf_counter() - t
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        for i, result in enumerate(self.problem.evaluate_many(candidates) if k else []):
            if result is None:  # the projection guarantees the budget; fail loudly rather than learn from it
                raise RuntimeError("a projected policy breaks a budget")
            rewards[i] = self.reward(result.accuracy, result.costs)
        return self.reset(), rewards, np.ones(self.num_envs, dtype=bool), [{} for _ in range(self.num_envs)]

    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name)] * self.num_envs

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name, *args, indices=None, **kwargs):
        return [getattr(self, method_name)(*args, **kwargs)] * self.num_envs

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * self.num_envs


class SavePolicy(BaseCallback):
    """Write the policy file after every PPO update (`GNNSearch.save`), so a run folder always has one."""

    def __init__(self, searcher: GNNSearch) -> None:
        super().__init__()
        self.searcher = searcher

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:  # SB3 has no hook after an update: this is the next one's start
        if self.num_timesteps > 0:
            self.searcher.updates += 1
            self.searcher.save()


def load_policy_file(path: str | Path) -> dict:
    """A saved GNN policy (file or run folder), checked: format, version and the feature set it was trained on."""
    path = Path(path)
    if path.is_dir():
        path = path / POLICY_FILE
    if not path.is_file():
        raise UserError(f"no GNN policy at {path}: give a run folder of `--agent gnn` or its {POLICY_FILE}")
    data = load_versioned(path, POLICY_FORMAT, POLICY_VERSION, "GNN policy")
    if data.get("feature_set") != FEATURE_SET or list(data.get("features", [])) != list(FEATURES) \
            or list(data.get("edge_features", [])) != list(EDGE_FEATURES):
        raise UserError(f"{path} was trained on features {data.get('feature_set')!r}, this autoprune computes "
                        f"{FEATURE_SET!r}: it cannot be reused here")
    return data


class GNNSearch(Searcher):
    """GNN-RL: a GATv2 actor-critic trained by SB3's PPO proposes whole policies, `rollout` at a time."""

    name = "gnn"
    default_evals = 300
    supports_batch = True  # workers evaluate each rollout in parallel; the rollout size does not follow them
    checkpoint_file = POLICY_FILE  # the search puts it in the run folder (`checkpoint_path`)

    # rollout 8 and lr 2e-3: on the known-answer problem (tests/test_gnn.py, seeds 0-2, 160 evaluations) 0.93-0.95
    # of the optimum's 0.954, against 0.79-0.87 with 16 per update at 1e-3 (fewer updates learn less from the same evaluations)
    def __init__(self, *, rollout: int = 8, epochs: int = 10, lr: float = 2e-3, clip: float = 0.2,
                 hidden: int = 64, layers: int = 3, heads: int = 4, reward: str | RewardFn = DEFAULT_REWARD,
                 init_from: str | Path | None = None, device: str = "cpu") -> None:
        if rollout < 2:
            raise UserError("the GNN's rollout must hold at least 2 policies (PPO normalises advantages over it)")
        self.rollout, self.epochs, self.lr, self.clip = rollout, epochs, lr, clip
        self.hparams = {"hidden": hidden, "layers": layers, "heads": heads}
        self.reward, self.reward_fn = reward, reward_function(reward)
        self.device = device
        self.init = load_policy_file(init_from) if init_from is not None else None
        if self.init is not None:
            self.hparams = dict(self.init["hparams"])  # the architecture the weights belong to
        self.model: PPO | None = None
        self.env: ProposalVecEnv | None = None
        self.updates = 0
        self._trained_on: dict = {}

    def search(self, problem, n_evals: int, *, seed: int) -> None:
        if problem.n_evals >= n_evals:
            return
        data = to_data(problem.space.graph, problem.space)
        self.env = ProposalVecEnv(problem, self.rollout, n_evals, self.reward_fn, seed)
        self.model = PPO(GraphPolicy, self.env, learning_rate=self.lr, n_steps=1, batch_size=self.rollout,
                         n_epochs=self.epochs, gamma=1.0, gae_lambda=1.0, clip_range=self.clip, ent_coef=0.0,
                         policy_kwargs={"data": data, **self.hparams}, seed=seed, device=self.device)
        if self.init is not None:
            self.model.policy.gnn.load_state_dict(self.init["state_dict"])
        self._trained_on = {"model": problem.space.graph.model_id, "groups": problem.space.size,
                            "seed": seed, "init_from": (self.init or {}).get("trained_on")}
        log.info("gnn: PPO, %d policies per update, up to %d evaluations", self.rollout, n_evals)
        callbacks = [StopAtEvals(problem, n_evals), SavePolicy(self)]
        self.model.learn(total_timesteps=(n_evals - problem.n_evals) + self.rollout, callback=callbacks)
        self.save()

    def state(self) -> dict:
        """What `save` writes: everything `load_policy_file` checks, and the GNN weights."""
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, "feature_set": FEATURE_SET,
                "features": list(FEATURES), "edge_features": list(EDGE_FEATURES), "hparams": dict(self.hparams),
                "trained_on": {**self._trained_on, "updates": self.updates},
                "state_dict": {k: v.detach().cpu() for k, v in self.model.policy.gnn.state_dict().items()}}

    def save(self, path: Path | None = None) -> Path | None:
        path = path or self.checkpoint_path
        if path is None or self.model is None:
            return None
        return save_atomic(self.state(), path)
