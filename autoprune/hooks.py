"""Forward hooks for the length of one block, and the recorder of every module call of a forward pass.

Layer: a leaf of autoprune (it imports only torch). The graph's analysis (`probe.record`), the
latency table's units (`cost/units.py`) and MetaPruning's PruningNet (its mask points and the
masks themselves) all need to see or change what a module computes during one forward pass;
they register hooks here and nowhere else.

Only the handles registered here are removed afterwards. Hooks the user put on their own model
stay where they are (a `module._forward_hooks.clear()` would silently drop them) and keep running
alongside ours, before them, as they were registered first.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

Hook = Callable[[nn.Module, tuple, Any], Any]  # (module, inputs, output) -> None, or a replacement output


class Call(NamedTuple):
    """One module call as a forward pass made it: a tuple, so `name, module, i, o = call` unpacks it."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]  # of the first positional input
    output_shape: tuple[int, ...]


def register(pairs: Iterable[tuple[nn.Module, Hook]]) -> list[RemovableHandle]:
    """Register each hook as a forward hook of its module; the handles, which alone undo it."""
    return [module.register_forward_hook(hook) for module, hook in pairs]


@contextmanager
def forward_hooks(pairs: Iterable[tuple[nn.Module, Hook]]) -> Iterator[list[RemovableHandle]]:
    """Each (module, hook) registered for the block, removed after it (by handle: only these)."""
    handles = register(pairs)
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def leaf_modules(model: nn.Module) -> list[nn.Module]:
    """Modules without children, in `model.modules()` order."""
    return [m for m in model.modules() if not list(m.children())]


def record_calls(model: nn.Module, forward: Callable[[], Any],
                 modules: Iterable[nn.Module] | None = None) -> tuple[list[Call], Any]:
    """Run `forward()` once without gradients; (every call of `modules` in execution order, its result).

    `modules` defaults to the leaves of `model`. A call is kept when its first input and its
    output are tensors (a module returning a tuple or taking keywords only has no shapes to give).
    Exceptions of the forward pass propagate, with the hooks removed.
    """
    names = {m: n for n, m in model.named_modules()}
    calls: list[Call] = []

    def hook(module: nn.Module, inputs: tuple, output) -> None:
        if isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
            calls.append(Call(names[module], module, tuple(inputs[0].shape), tuple(output.shape)))

    targets = leaf_modules(model) if modules is None else modules
    with forward_hooks((m, hook) for m in targets), torch.no_grad():
        out = forward()
    return calls, out
