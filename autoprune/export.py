"""Getting results out of autoprune and into other tools: NNI, Torch-Pruning, ONNX / TorchScript.

A policy is only useful if the tool that prunes and fine-tunes for real reproduces it exactly.
Both NNI and Torch-Pruning turn a ratio into a channel count by *truncation* (NNI 2 removes
``int(n * r)`` channels, Torch-Pruning keeps ``int(n * (1 - r))``), so a ratio such as 0.614583
(six-decimal rounding of 59/96) silently keeps one channel too many. Every ratio written here is
therefore chosen -- within a few 1e-6 of the effective ratio ``1 - kept / n`` -- so that the
target tool's own arithmetic lands on exactly the kept count autoprune measured and costed.

A ratio fixes how many channels survive, not which: the tool's criterion chooses. Torch-Pruning
with the policy's own criterion (`apply_tp_ratio_dict(..., policy=...)`) chooses autoprune's
channels; NNI's pruners do not, so the exact channels go to NNI as masks (`autoprune.masks`,
nni_masks.pt, for ``ModelSpeedup``). docs/exports.md says which file each tool reads.
"""
from __future__ import annotations

import copy
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from autoprune import tp_extensions
from autoprune.errors import UserError
from autoprune.evaluate import set_layout
from autoprune.graph import LAYER_TYPES, PruningGraph, channel_divisor
from autoprune.importance import DATA_CRITERIA
from autoprune.importance import importance as _importance
from autoprune.masks import NNI_MASKS_FILE, nni_masks
from autoprune.policy import Policy
from autoprune.run_summary import RunSummary

log = logging.getLogger(__name__)

NNI_CONFIG_FILE = "nni_config_list.json"
TP_RATIO_FILE = "tp_pruning_ratio_dict.json"
# The ONNX protobuf limit is 2 GiB; below this the weights go inside the .onnx file itself.
_ONNX_INLINE_BYTES = 1_500_000_000


# --------------------------------------------------------------------------- ratios


def _kept_counts(graph: PruningGraph, policy: Policy) -> list[tuple[str, int, int]]:
    """(group name, channels, kept) for every group; kept = round((1 - r) * n), as the policy means it."""
    vector = policy.vector(graph)  # rejects names the graph does not have
    rows = []
    for g, r in zip(graph.groups, vector):
        if not 0.0 <= r < 1.0:
            raise UserError(f"policy ratio of group {g.name} is {r}; ratios must lie in [0, 1)")
        kept = int(round((1.0 - r) * g.channels))
        if kept < 1:
            raise UserError(f"policy ratio {r} of group {g.name} keeps no channel of {g.channels}")
        if kept % g.divisor:
            raise UserError(f"policy ratio {r} of group {g.name} keeps {kept} of {g.channels} channels; its grouped "
                            f"convolution needs a multiple of {g.divisor}")
        rows.append((g.name, g.channels, kept))
    return rows


def _snap_ratio(n: int, want: int, realised: Callable[[float], int], direction: int) -> float:
    """A short ratio close to (n - kept)/n for which `realised(ratio)` (the tool's own arithmetic) == want.

    Tries the six-decimal rounding first, then steps of 1e-6 in `direction`; the window of valid
    ratios is 1/n wide, so this succeeds for any layer under ~10^5 channels. The fallback, the
    middle of the window, is immune to float error for any n.
    """
    exact = want / n if direction > 0 else 1.0 - want / n
    for step in range(4):
        r = round(exact + direction * step * 1e-6, 6)
        if 0.0 <= r < 1.0 and realised(r) == want:
            return r
    r = (want + 0.5) / n if direction > 0 else 1.0 - (want + 0.5) / n
    if realised(r) != want:  # pragma: no cover - arithmetic guarantee
        raise AssertionError(f"no ratio reproduces {want} of {n} channels")
    return r


def tp_ratio(channels: int, kept: int) -> float:
    """The Torch-Pruning ratio that keeps exactly `kept` of `channels`.

    Torch-Pruning's pruner keeps ``int(channels * (1 - ratio))`` (base_pruner, one iterative
    step), truncating: the nominal 1 - 9/24 may evaluate to 8.999999... and keep 8.
    """
    if kept == channels:
        return 0.0
    return _snap_ratio(channels, kept, lambda r: int(channels * (1.0 - r)), direction=-1)


def nni_ratio(channels: int, kept: int) -> float:
    """The NNI sparsity that removes exactly `channels - kept` channels (NNI 2 removes ``int(n * r)``).

    The value is within 1e-6-ish of the effective ratio, so a rounding implementation
    (``round(n * r)``) removes the same count.
    """
    if kept == channels:
        return 0.0
    return _snap_ratio(channels, channels - kept, lambda r: int(channels * r), direction=+1)


# --------------------------------------------------------------------------- NNI


def nni_config_list(graph: PruningGraph, policy: Policy, *, nni_version: int = 2) -> list[dict]:
    """NNI's per-layer ``config_list``: one entry per pruned group, naming the layers it shrinks.

    ``op_names`` are the conv/linear layers whose *output* channels the group removes; coupled
    layers (residual adds, depthwise pairs) share one entry so that they get the same sparsity.
    NNI 2.x reads ``sparsity_per_layer``; NNI 3 renamed the key to ``sparse_ratio`` -- pick with
    `nni_version`. The counts are exact, the channels are NNI's choice: its pruners rank each layer
    by its own weight norms (NNI 2.10's speedup then keeps the *union* of coupled layers' channels:
    58.7% MACs instead of 50% on ResNet-20), or dependency-aware by a group score unlike autoprune's
    (exact MACs, other channels). nni_masks.pt (`autoprune.masks`) carries autoprune's channels.
    """
    if nni_version not in (2, 3):
        raise UserError(f"nni_version must be 2 or 3, got {nni_version}")
    key = "sparsity_per_layer" if nni_version == 2 else "sparse_ratio"
    by_name = {g.name: g for g in graph.groups}
    config = []
    for name, n, kept in _kept_counts(graph, policy):
        if kept < n:
            config.append({"op_names": list(by_name[name].layers), key: nni_ratio(n, kept)})
    return config


# --------------------------------------------------------------------------- Torch-Pruning


def tp_ratio_dict(graph: PruningGraph, policy: Policy) -> dict[str, float]:
    """Torch-Pruning ``pruning_ratio_dict`` keyed by each pruned group's root module name.

    Names (not modules) so it can be written as JSON; `apply_tp_ratio_dict` maps them back onto a
    model. Groups that keep everything are left out: the pruner's global ratio of 0 keeps them.
    Torch-Pruning applies the ratio of a grouped convolution's group to one of its `divisor` chunks,
    so that ratio is computed per chunk.
    """
    divisor = {g.name: g.divisor for g in graph.groups}
    return {name: tp_ratio(n // divisor[name], kept // divisor[name])
            for name, n, kept in _kept_counts(graph, policy) if kept < n}


def _last_layer(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """The last conv/linear layer to run -- the classifier, whose outputs are the classes."""
    seen: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda mod, _i, _o: seen.append(mod))
               for m in model.modules() if isinstance(m, LAYER_TYPES)]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise UserError("the model has no convolution or linear layer")
    return seen[-1]


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a {what} (a JSON object of module name -> ratio)")
    return data


def apply_tp_ratio_dict(model: nn.Module, example_inputs: torch.Tensor,
                        ratio_dict: Mapping[str | nn.Module, float] | str | Path, *,
                        policy: Policy | str | Path | None = None,
                        importance: str | tp.importance.Importance | None = None,
                        ignored_layers: Iterable[str | nn.Module] | None = None, seed: int | None = None) -> nn.Module:
    """Prune `model` in place with Torch-Pruning's own pruner, as a Torch-Pruning user would.

    This is the bridge for people who prune and fine-tune with Torch-Pruning: it runs
    ``tp.pruner.MetaPruner(pruning_ratio=0.0, pruning_ratio_dict=...)`` and one ``step()``, so
    the dict (from `tp_ratio_dict`, or the path of tp_pruning_ratio_dict.json) yields exactly the
    kept channel counts -- hence MACs and params -- of autoprune's `apply_policy`. Which channels
    survive is the importance criterion's choice, so the one-call path that rebuilds autoprune's
    model exactly (same channels, same weights) names the run's policy.json::

        apply_tp_ratio_dict(model, x, "run/tp_pruning_ratio_dict.json", policy="run/policy.json")

    `importance` defaults to the policy's own criterion and `seed` to its seed (policy.json's
    ``criterion`` / ``seed``; "l2" and 0, the search defaults, without a policy); a name of
    `autoprune.importance` ("l1", "l2", "bn-scale", "lamp", "fpgm", "random") or a tp importance.
    A data-aware criterion (taylor, hessian, activation) ranked channels with the run's training
    batches, so no ratio dict reproduces them: use nni_masks.pt (`autoprune.masks`) or pruned.pt.
    Groups not in the dict keep all channels (the global ratio is 0). `ignored_layers` (names or
    modules, e.g. the graph's ``ignored_layers()``) defaults to the classifier, found as the last
    conv/linear layer to run, so that its outputs -- the classes -- can never shrink.

    Raises UserError when the dict names unknown modules, holds ratios outside [0, 1), or when a
    named layer did not end at the expected width (it sits in an ignored group, or two entries of
    one coupled group disagree).
    """
    if isinstance(ratio_dict, (str, Path)):
        ratio_dict = _read_json(Path(ratio_dict), "pruning_ratio_dict")
    if isinstance(policy, (str, Path)):
        policy = Policy.load(Path(policy))
    meta = RunSummary.read(policy.meta if policy is not None else {})
    if seed is None:
        seed = int(meta.seed)
    if importance is None:
        importance = meta.criterion
    if isinstance(importance, str) and importance in DATA_CRITERIA:
        raise UserError(f"criterion '{importance}' ranked channels with the run's training batches: a ratio dict "
                        "cannot reproduce them; rebuild from nni_masks.pt or load pruned.pt (or pass a Torch-Pruning "
                        "importance object to choose channels anew)")
    modules = dict(model.named_modules())

    def resolve(item: str | nn.Module, what: str) -> nn.Module:
        if isinstance(item, nn.Module):
            return item
        if item not in modules:
            raise UserError(f"{what} names no module of the model: {item}")
        return modules[item]

    was_training = model.training
    model.eval()  # tracing forwards the model; in train mode that would move BN running stats
    try:
        ratios: dict[nn.Module, float] = {}
        for key, r in ratio_dict.items():
            if not 0.0 <= float(r) < 1.0:
                raise UserError(f"pruning ratio of {key} is {r}; ratios must lie in [0, 1)")
            ratios[resolve(key, "pruning_ratio_dict")] = float(r)
        if ignored_layers is None:
            ignored = [_last_layer(model, example_inputs)]
        else:
            ignored = [resolve(item, "ignored_layers") for item in ignored_layers]
        imp = importance if not isinstance(importance, str) else _importance(importance, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tp warns about unwrapped parameters etc.
            pruner = tp_extensions.meta_pruner(model, example_inputs, importance=imp, pruning_ratio=0.0,
                                               pruning_ratio_dict=ratios, ignored_layers=ignored, iterative_steps=1)
        # What tp's arithmetic promises, checked afterwards: a silently skipped entry is a wrong model.
        # A grouped convolution's group is `d` chunks, and the ratio applies to one chunk.
        expected = {}
        for m, r in ratios.items():
            fn = pruner.DG.get_pruner_of_module(m).prune_out_channels
            d = channel_divisor(pruner.DG, pruner.DG.get_pruning_group(m, fn, idxs=[0]))
            expected[m] = d * int(pruner.DG.get_out_channels(m) // d * (1.0 - r))
        pruner.step()
    finally:
        model.train(was_training)
    names = {m: n for n, m in model.named_modules()}
    for m, want in expected.items():
        got = pruner.DG.get_out_channels(m)
        if got != want:
            raise UserError(f"{names.get(m, m)} kept {got} channels instead of {want}: it is in an ignored "
                            "group, or coupled with another entry of a different ratio")
    return model


# --------------------------------------------------------------------------- model files


def _onnx_export(model: nn.Module, example_input: torch.Tensor, path: Path) -> list[Path]:
    """Export to ONNX and check it: the TorchScript-based exporter first (0.4 s for a ResNet-20
    against ~8 s for the dynamo one, measured here), the dynamo exporter when it fails."""
    import onnx

    inline = sum(p.numel() * p.element_size() for p in model.parameters()) < _ONNX_INLINE_BYTES
    # Dim 0 of the input and the output is the batch, left symbolic: deployment runs batches of any
    # size, and a file fixed at the example's batch is refused by onnxruntime at any other.
    batch = torch.export.Dim("batch")
    attempts = [("torchscript", dict(dynamo=False, dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})),
                ("dynamo", dict(dynamo=True, external_data=not inline, verbose=False,
                                dynamic_shapes=({0: batch},)))]
    errors = []
    for label, kwargs in attempts:
        for leftover in (path, path.with_name(path.name + ".data")):
            leftover.unlink(missing_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # torch.export specialises a dimension of size 1: the dynamo exporter traces a batch of 2
                example = (example_input if label == "torchscript"
                           else example_input[:1].expand(2, *example_input.shape[1:]))
                torch.onnx.export(model, (example,), str(path), input_names=["input"],
                                  output_names=["output"], **kwargs)
            onnx.checker.check_model(str(path))  # a path, so external data and >2 GiB files work
        except Exception as exc:  # exporters fail in many types
            first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[:1]  # exporter colours
            errors.append(f"{label}: {type(exc).__name__}: {first[0] if first else ''}")
            log.debug("ONNX export with the %s exporter failed", label, exc_info=True)
            continue
        log.debug("ONNX export with the %s exporter", label)
        data = path.with_name(path.name + ".data")
        return [path, data] if data.exists() else [path]
    for leftover in (path, path.with_name(path.name + ".data")):
        leftover.unlink(missing_ok=True)
    raise RuntimeError("; ".join(errors))


def save_pruned_model(model: nn.Module, out_dir: Path, example_input: torch.Tensor, *,
                      stem: str = "pruned") -> dict[str, Path]:
    """Write the pruned model as `<stem>.pt` (whole module) and `<stem>.onnx` (or `<stem>.ts`).

    A pruned model no longer matches its class's constructor, so a state_dict alone cannot be
    loaded back: the whole module is pickled (load with ``torch.load(path, weights_only=False)``,
    where the model's class is importable). The ONNX graph's input "input" and output "output"
    have a symbolic batch dimension ("batch"): any batch size runs. ONNX is for deployment runtimes;
    if neither exporter manages the model, a traced TorchScript file is written instead and a
    warning logged. Returns {"pt", "onnx" [, "onnx_data"] | "torchscript"}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A copy: exporting must not switch the caller's model mode. Contiguous layout: the evaluator
    # leaves channels_last parameters behind, and the file should hold PyTorch's default layout.
    model = set_layout(copy.deepcopy(model).cpu().eval())
    paths: dict[str, Path] = {}
    paths["pt"] = out_dir / f"{stem}.pt"
    torch.save(model, paths["pt"])
    if not isinstance(example_input, torch.Tensor):
        log.warning("no ONNX or TorchScript file: the model's input is a %s, and the exports here take one input "
                    "tensor; %s holds the pruned module", type(example_input).__name__, paths["pt"].name)
        return paths
    example_input = example_input.detach().cpu()
    try:
        written = _onnx_export(model, example_input, out_dir / f"{stem}.onnx")
        paths["onnx"] = written[0]
        if len(written) > 1:
            paths["onnx_data"] = written[1]
    except RuntimeError as exc:
        log.warning("ONNX export failed (%s); writing TorchScript instead", exc)
        path = out_dir / f"{stem}.ts"
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # jit is deprecated, but it is the fallback
                traced = torch.jit.trace(model, example_input, strict=False)  # strict=False: dict/list outputs
                torch.jit.save(traced, str(path))
            paths["torchscript"] = path
        except Exception as trace_exc:  # tracing fails in many types
            path.unlink(missing_ok=True)
            log.warning("TorchScript tracing failed too (%s: %s); %s holds the pruned module",
                        type(trace_exc).__name__, str(trace_exc).splitlines()[0] if str(trace_exc) else "",
                        paths["pt"].name)
    return paths


def write_exports(out_dir: Path, graph: PruningGraph, policy: Policy, model: nn.Module | None = None,
                  example_input: torch.Tensor | None = None, *, nni_version: int = 2, base: nn.Module | None = None,
                  orders: Sequence[torch.Tensor] | None = None) -> dict[str, Path]:
    """Write every export of a policy into `out_dir`; with a pruned `model`, its model files too.

    The JSON files hold module names, so they apply to any fresh instance of the same
    architecture: `apply_tp_ratio_dict` re-applies the Torch-Pruning one. With the unpruned `base`
    model the policy was searched on, nni_masks.pt too (`autoprune.masks.nni_masks`: the exact
    channels, for NNI's ``ModelSpeedup``); `orders` are the run's removal orders where its
    criterion is data-aware (default: policy.json's ``channel_orders``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"nni_config_list": out_dir / NNI_CONFIG_FILE, "tp_pruning_ratio_dict": out_dir / TP_RATIO_FILE}
    paths["nni_config_list"].write_text(
        json.dumps(nni_config_list(graph, policy, nni_version=nni_version), indent=2) + "\n")
    paths["tp_pruning_ratio_dict"].write_text(json.dumps(tp_ratio_dict(graph, policy), indent=2) + "\n")
    if base is not None:
        paths["nni_masks"] = out_dir / NNI_MASKS_FILE
        torch.save(nni_masks(base, graph, policy, orders=orders), paths["nni_masks"])
    if model is not None:
        if example_input is None:
            example_input = graph.example()
        paths.update(save_pruned_model(model, out_dir, example_input))
    return paths
