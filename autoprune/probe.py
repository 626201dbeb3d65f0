"""Running a model on its example input: recorded op shapes, and the two-step probe of every group.

`record` runs one forward pass and returns every counted module call with its input and output
shapes, every parameter dimension as one flat list, and the shapes of the model's outputs (a tensor,
or any nesting of tuples, lists and dicts of them, as segmentation and detection models return).
Modules are counted as Torch-Pruning's op counter counts them (`count_macs_params`), subclasses
included: timm's `ScaledStdConv2d` and `Linear` are convolutions and linear layers to a user.

`probe_groups` removes one channel per chunk of each group in turn on a scratch copy and records
which dimensions shrink, then the share `deepest` of every chunk (the search's largest prune ratio),
which must shrink them in step (costs are affine in the kept channels) and leave a model that runs.
A group whose removal breaks the forward pass (a `split_with_sizes` with fixed sizes, a `view` to a
fixed shape, an add of two tensors whose channels are not coupled) or changes the model's outputs is
*frozen*: left whole, as a Torch-Pruning user would put its root in `ignored_layers`, and the model
is restored to the last good state before the next group is tried.
"""
from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.utils import op_counter
from torch_pruning.utils.op_counter import MODULES_MAPPING

from autoprune.hooks import record_calls


@dataclass
class FrozenGroup:
    """A channel group left whole because pruning it breaks the model."""

    name: str  # root layer
    channels: int
    op: str  # the operation that breaks, e.g. "split_with_sizes"
    where: str  # the module whose forward raised, e.g. "layer1.0"

    @property
    def breaks(self) -> str:
        return f"{article(self.op)} {self.op} in {self.where}"

    def to_dict(self) -> dict:
        return {**asdict(self), "breaks": self.breaks}


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def counted_base(m: nn.Module) -> type | None:
    """The op-counter type `m` is counted as: its own, or its nearest counted base class."""
    return next((t for t in type(m).__mro__ if t in MODULES_MAPPING), None)


def counted_modules(model: nn.Module) -> list[nn.Module]:
    """The modules Torch-Pruning's counter counts: a counted module's own children are not (its
    `accumulate_flops` stops there), e.g. the activation inside timm's BatchNormAct2d."""
    out: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        if counted_base(m) is not None:
            out.append(m)
            return
        for child in m.children():
            walk(child)

    walk(model)
    return out


def call_model(model: nn.Module, example):
    """Call `model` on an example as Torch-Pruning does: a tuple/list is positional, a dict keywords."""
    if isinstance(example, (tuple, list)):
        return model(*example)
    if isinstance(example, dict):
        return model(**example)
    return model(example)


@torch.no_grad()
def count_macs_params(model: nn.Module, example) -> tuple[float, float]:
    """`torch_pruning.utils.count_ops_and_params`, with subclasses of counted modules counted as their base."""
    custom = {type(m): MODULES_MAPPING[counted_base(m)] for m in model.modules()
              if type(m) not in MODULES_MAPPING and counted_base(m) is not None}
    op_counter.CUSTOM_MODULES_MAPPING = custom  # tp's own hook for user types; it resets it after counting
    return tp.utils.count_ops_and_params(model, example)


def output_kind(out) -> str | None:
    """None for (batch, classes) logits, what top-1 accuracy can score; else what the output is
    ("OrderedDict", "tuple", "a 4-d tensor")."""
    if isinstance(out, torch.Tensor):
        return None if out.dim() == 2 else f"a {out.dim()}-d tensor"
    return type(out).__name__


def output_shapes(out) -> list[tuple[int, ...]]:
    """Shapes of every tensor in a (nested) model output."""
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict):
        return [s for v in out.values() for s in output_shapes(v)]
    if isinstance(out, (tuple, list)):
        return [s for v in out for s in output_shapes(v)]
    return []


class _Locator:
    """Which module's forward an exception came from: a stack of the modules being run."""

    def __init__(self, model: nn.Module) -> None:
        names = {m: n for n, m in model.named_modules()}
        self.stack: list[str] = []
        self.handles = []
        for m in model.modules():
            self.handles.append(m.register_forward_pre_hook(self._enter(names[m])))
            self.handles.append(m.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(_module, _inputs) -> None:
            self.stack.append(name)
        return hook

    def _leave(self, _module, _inputs, _output) -> None:  # returns None: the output is left alone
        self.stack.pop()

    def where(self) -> str:
        return self.stack[-1] if self.stack and self.stack[-1] else "the model's forward"

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def record(model: nn.Module, example) -> tuple[list[tuple], list[int], list]:
    """Forward once: (calls, dims, output shapes); each call is (name, module, input shape, output shape).

    `dims` is every call's input and output dims, then every parameter's: the positions the cost
    terms and the probe share. Exceptions of the forward pass propagate.
    """
    calls, out = record_calls(model, lambda: call_model(model, example), counted_modules(model))
    dims = [d for _, _, i, o in calls for d in (*i, *o)]
    dims += [d for _, p in model.named_parameters() for d in p.shape]
    return calls, dims, output_shapes(out)


_BREAKS = (  # (pattern in the error, the operation it means)
    (r"split_with_sizes|split_size", "split_with_sizes"),
    (r"shape '\[[^\]]*\]' is invalid", "view/reshape to a fixed shape"),
    (r"must match the size of tensor", "elementwise op on uncoupled channels (add/mul)"),
    (r"Sizes of tensors must match", "concatenation"),
    (r"expected input\[.*\] to have \d+ channels", "convolution with a fixed input width"),
)


def broken_op(exc: BaseException) -> str:
    """The operation a pruned forward broke, from its exception: 'split_with_sizes', ..."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    op = next((name for pattern, name in _BREAKS if re.search(pattern, text)), None)
    if op is None:
        op = f"{type(exc).__name__} ({text[:80]})" if text else type(exc).__name__
    return op


def probe_groups(model: nn.Module, pristine: nn.Module, example, groups: list, base: tuple[list, list[int], list],
                 build_dg: Callable[[nn.Module], tp.DependencyGraph], dg: tp.DependencyGraph,
                 chunk_positions: Callable, *, deepest: float = 0.8,
                 progress: Callable[[str], None] = lambda _m: None) -> tuple[np.ndarray, list[FrozenGroup]]:
    """(mult, frozen): per group, how much each dim shrinks per kept channel, and the groups left whole.

    `model` is a scratch copy (pruned in place), `dg` its dependency graph, `pristine` an unpruned copy
    left untouched (a broken scratch is rebuilt from it). Columns of frozen groups in `mult` are zero;
    the caller drops those groups.
    """
    _calls, base_dims, base_out = base
    prev = np.array(base_dims, dtype=np.float64)
    mult = np.zeros((len(prev), len(groups)))
    frozen: list[FrozenGroup] = []
    done: list[tuple[str, list[int]]] = []  # groups pruned so far: replayed on a restored copy
    start = time.monotonic()
    for count, g in enumerate(groups, 1):
        if count % 10 == 0:
            progress(f"probing channel group {count}/{len(groups)} ({time.monotonic() - start:.0f} s)")
        size = g.channels // g.divisor
        # one channel per chunk, then up to `deepest` of them: a dimension must shrink alike per channel at
        # both ends (costs are affine in the kept channels), and the model must run at the most a policy removes
        most = min(size - 1, max(1, int(size * deepest)))
        steps = [(g.channels, [0])] + ([(g.channels - g.divisor, list(range(most - 1)))] if most > 1 else [])
        locator = _Locator(model)
        try:
            dims = []
            for channels, positions in steps:
                root = dict(model.named_modules())[g.name]
                idxs = chunk_positions(channels, g.divisor, positions)
                where = "Torch-Pruning's pruning function"
                dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs=idxs).prune()
                where = None
                _, now, out = record(model, example)
                dims.append(np.array(now, dtype=np.float64))
                if dims[-1].shape != prev.shape:
                    raise _Broken("change in the network's ops (some appear or vanish)")
                if out != base_out:
                    raise _Broken("change of the model's output shape")
            if len(dims) > 1 and not np.array_equal(prev - dims[1], most * (prev - dims[0])):
                raise _Broken("shape that does not shrink in step with the channels (fixed-size chunks)")
        except Exception as exc:  # any failure of the pruned model (or of the pruning) freezes the group
            op = exc.reason if isinstance(exc, _Broken) else broken_op(exc)
            frozen.append(FrozenGroup(g.name, g.channels, op, where or locator.where()))
            model, dg = _restore(pristine, done, build_dg)
            continue
        finally:
            locator.remove()
        done.extend((g.name, chunk_positions(channels, g.divisor, positions)) for channels, positions in steps)
        mult[:, g.index] = (prev - dims[0]) / g.divisor
        prev = dims[-1]
    return mult, frozen


class _Broken(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _restore(pristine: nn.Module, done: list[tuple[str, list[int]]],
             build_dg: Callable[[nn.Module], tp.DependencyGraph]) -> tuple[nn.Module, tp.DependencyGraph]:
    """A fresh copy of the unpruned model with the groups in `done` pruned again, and its graph."""
    model = copy.deepcopy(pristine)
    dg = build_dg(model)
    modules = dict(model.named_modules())
    for name, idxs in done:
        root = modules[name]
        dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs=idxs).prune()
    return model, dg
