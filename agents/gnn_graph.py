"""The network as a torch-geometric graph: what the GNN policy sees (`agents/gnn.py`).

One node per conv/linear layer of `PruningGraph.layers`, in execution order; directed data-flow
edges from `PruningGraph.edges` (residual adds and concatenations included, so a skip connection
is an edge that skips layers), each also present reversed so that messages flow both ways, with
an edge attribute that says which way. Every node knows the action it belongs to: its prunable
group in the channel space (`Layer.group`, -1 for fixed layers), or the layer itself in the
unstructured space.

Node features transfer across networks: none depends on the number of layers or on the
network's absolute size. Each is a fixed transform into roughly [0, 1] (logs of channel counts and
sizes over fixed scales, shares of the network's MACs and params, relative depth), recorded with
the policy (`FEATURES`, `FEATURE_SET`) so a policy file is only ever read with the features it
was trained on.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch_geometric.data import Data

from autoprune.graph import PruningGraph

KINDS = ("conv", "depthwise", "linear")
# name -> what it is (the transform is in `node_features`); the order is the feature vector's
FEATURES = {
    "kind_conv": "1 for a dense convolution", "kind_depthwise": "1 for a depthwise convolution",
    "kind_linear": "1 for a linear layer",
    "log_in_channels": "log2(in channels) / 12", "log_out_channels": "log2(out channels) / 12",
    "kernel": "(kernel - 1) / 6", "log_stride": "log2(stride) / 2", "log_out_size": "log2(output h*w) / 16",
    "macs_share": "the layer's share of the network's MACs", "log_macs_share": "1 + log10(MACs share) / 6",
    "params_share": "the layer's share of the network's params", "log_params_share": "1 + log10(params share) / 6",
    "depth": "relative depth in execution order, 0 (first layer) .. 1 (last)",
    "prunable": "1 if a searchable group (or layer) prunes its outputs", "coupled": "1 if its group is residual "
    "or depthwise (channels tied across layers)", "log_group_layers": "log2(1 + layers that share its group) / 6",
}
FEATURE_SET = "autoprune.gnn-features/1"
EDGE_FEATURES = ("forward", "depth_span")  # 1 along the data flow, 0 reversed; |relative depth difference|


def _log_share(share: float) -> float:
    return float(np.clip(1.0 + math.log10(max(share, 1e-6)) / 6.0, 0.0, 1.0))


def action_index(graph: PruningGraph, space) -> np.ndarray:
    """Per node, the action (space position) it belongs to, -1 for a layer no action prunes."""
    if getattr(space, "kind", "channel") == "channel":
        return np.array([lay.group for lay in graph.layers], dtype=np.int64)
    position = {name: i for i, name in enumerate(space.names)}
    return np.array([position.get(lay.name, -1) for lay in graph.layers], dtype=np.int64)


def node_features(graph: PruningGraph, actions: np.ndarray) -> np.ndarray:
    """(nodes, len(FEATURES)) float32, each column the transform `FEATURES` names."""
    layers = graph.layers
    n = len(layers)
    total_macs = max(float(sum(lay.macs for lay in layers)), 1.0)
    total_params = max(float(sum(lay.params for lay in layers)), 1.0)
    kinds = {g.index: g.kind for g in graph.groups}
    members = np.bincount(actions[actions >= 0], minlength=max(int(actions.max()) + 1, 1)) if (actions >= 0).any() \
        else np.zeros(1, dtype=np.int64)
    rows = []
    for i, lay in enumerate(layers):
        a = int(actions[i])
        macs_share, params_share = lay.macs / total_macs, lay.params / total_params
        rows.append([
            *(float(lay.kind == k) for k in KINDS),
            math.log2(max(lay.in_channels, 1)) / 12, math.log2(max(lay.out_channels, 1)) / 12,
            (lay.kernel - 1) / 6, math.log2(max(lay.stride, 1)) / 2, math.log2(max(lay.out_hw, 1)) / 16,
            macs_share, _log_share(macs_share), params_share, _log_share(params_share),
            i / (n - 1) if n > 1 else 0.0,
            float(a >= 0), float(a >= 0 and kinds.get(lay.group) in ("residual", "depthwise")),
            math.log2(1 + (members[a] if a >= 0 else 0)) / 6,
        ])
    return np.asarray(rows, dtype=np.float32)


def to_data(graph: PruningGraph, space) -> Data:
    """The pyg `Data` of a network: x (node features), edge_index / edge_attr (both ways), action (per node)."""
    actions = action_index(graph, space)
    n = len(graph.layers)
    depth = np.arange(n) / max(n - 1, 1)
    src, dst, attr = [], [], []
    for i, j in graph.edges:
        span = abs(depth[j] - depth[i])
        src += [i, j]
        dst += [j, i]
        attr += [[1.0, span], [0.0, span]]
    return Data(x=torch.from_numpy(node_features(graph, actions)),
                edge_index=torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
                edge_attr=torch.tensor(attr, dtype=torch.float32).reshape(-1, len(EDGE_FEATURES)),
                action=torch.from_numpy(actions), num_actions=int(space.size))
