"""Gymnasium environments; importing this registers `autoprune/LayerPruning-v0`.

    import gymnasium, autoprune.envs
    env = gymnasium.make("autoprune/LayerPruning-v0", problem=problem)

The env holds the problem by reference (its evaluations land in the problem's study). Gymnasium's
wrappers deep-copy their spec, kwargs included, whenever `env.spec` is read: read
`env.unwrapped.spec` instead, or build `LayerPruningEnv(problem)` directly (as the agents do).
"""
from __future__ import annotations

import gymnasium

from autoprune.envs.layerwise import LayerPruningEnv, reward_function

LAYER_PRUNING_ID = "autoprune/LayerPruning-v0"

if LAYER_PRUNING_ID not in gymnasium.registry:  # re-imports (reloads, notebooks) must not warn
    gymnasium.register(id=LAYER_PRUNING_ID, entry_point="autoprune.envs.layerwise:LayerPruningEnv")

__all__ = ["LAYER_PRUNING_ID", "LayerPruningEnv", "reward_function"]
