"""The Python surface: search pruning ratios for a model object on your own data; rebuild a pruned copy.

    import autoprune
    result = autoprune.search(model, budget="50%FLOPs", train=train_loader, heldout=val_loader, evals=60)
    result.policy.ratios, result.pruned_model, result.tp_pruning_ratio_dict, result.nni_config_list
    result.save("runs/mine")

`search` builds the same `SearchConfig` as `autoprune search` and runs the same `execute_search`, so
the same settings and seed give the same result from Python as from the shell; names (a zoo model,
a registered dataset) go through exactly the CLI's path. Objects (an `nn.Module`, Datasets or
DataLoaders, an `evaluate(model) -> float`) are wrapped into the bundles the engine already takes.
Bad input raises `autoprune.UserError` with the CLI's one-line message.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autoprune.rebuild import PYTHON_DATA, PYTHON_MODEL, prune_as_policy, run_calibration
from autoprune.data import DataBundle, carve_heldout, load_data
from autoprune.errors import UserError, one_line
from autoprune.policy import Policy
from autoprune.progress_lines import ProgressLines
from autoprune.run_summary import RunSummary
from autoprune.search_job import Inputs, SearchConfig, execute_search, prepare_search
from autoprune.zoo import ModelBundle

DataArg = Dataset | DataLoader | None
log = logging.getLogger("autoprune")  # quiet unless the application configures logging, or verbose=True
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(SearchConfig)} - {"model", "budgets", "data"}


@dataclass
class SearchResult:
    """What a search returns: the policy, its costs and accuracies, the pruned model, exports and study."""

    summary: dict  # policy.json's entries: costs, accuracies, settings, how the pick was made
    policy: Policy
    pruned_model: nn.Module  # physically pruned, BN recalibrated (refitted too with reconstruct=True)
    base_model: nn.Module
    folder: Path  # the run folder written (a temporary one unless out= was given): save() copies it
    _setup: object = dataclasses.field(repr=False, default=None)

    @property
    def run_summary(self) -> RunSummary:
        """`summary` as a typed RunSummary (the policy.json keys and their defaults)."""
        return RunSummary.read(self.summary)

    @property
    def heldout_accuracy(self) -> float:
        return self.run_summary.heldout_accuracy

    @property
    def test_accuracy(self) -> float | None:
        return self.run_summary.test_accuracy

    @property
    def macs(self) -> float:
        return self.run_summary.macs

    @property
    def params(self) -> float:
        return self.run_summary.params

    @property
    def verified(self) -> bool | None:
        """Whether the returned policy's latency was measured within its latency budget; None without one.
        False is what the CLI exits 3 for: the policy is returned (and warned about) but not verified."""
        check = self.run_summary.latency_verification
        return None if check is None else bool(check["verified"])

    @property
    def study(self):
        """The Optuna study holding every evaluation (`study.trials_dataframe()`, `optuna.visualization`)."""
        return self._setup.problem.study.study

    @property
    def tp_pruning_ratio_dict(self) -> dict[str, float]:
        """{module name: ratio} for Torch-Pruning's `pruning_ratio_dict` (see autoprune.export.apply_tp_ratio_dict)."""
        from autoprune.export import tp_ratio_dict

        return tp_ratio_dict(self._setup.problem.space.graph, self.policy)

    @property
    def nni_config_list(self) -> list[dict]:
        """NNI's config_list; the exact channels are in FOLDER/nni_masks.pt (docs/exports.md)."""
        from autoprune.export import nni_config_list

        return nni_config_list(self._setup.problem.space.graph, self.policy)

    def save(self, folder: str | Path) -> Path:
        """Copy the run folder (policy.json, study.db, exports, report) to `folder`, which must be new or empty.

        >>> result.save("runs/mine")  # then: autoprune report runs/mine, autoprune export runs/mine/policy.json
        """
        folder = Path(folder)
        if folder.resolve() == self.folder.resolve():
            return folder
        if folder.exists() and any(folder.iterdir()):
            raise UserError(f"run folder {folder} already exists and is not empty: choose another folder")
        shutil.copytree(self.folder, folder, dirs_exist_ok=True)
        return folder


def search(model: nn.Module | str, budget: str | Sequence[str], *, data: str | None = None,
           train: DataArg = None, heldout: DataArg | int = None, test: DataArg = None,
           evaluate: Callable[[nn.Module], float] | None = None, example_inputs=None,
           batch_to_inputs: Callable | None = None, agent: str = "tpe", evals: int | None = None,
           seed: int = 0, out: str | Path | None = None, device: str = "auto", verbose: bool = False,
           **options) -> SearchResult:
    """Search per-group prune ratios of `model` that keep the most accuracy within `budget`.

    model: an `nn.Module` (trained), or a model name as on the command line ("resnet20").
    budget: "50%FLOPs", "1.5Mparams", "12ms", ... or a list of them (all must hold).
    data: a registered dataset name ("fashion-mnist", "cifar10:ROOT", "folder:PATH"), or instead
      train: your training Dataset/DataLoader (BN recalibration; least-squares refit; fine-tuning),
      heldout: the Dataset/DataLoader candidates are scored on (default: carved from `train`; an int
      sets how many images to carve, default 5000), or evaluate: your `evaluate(model) -> float` in
      [0, 1] (higher is better), called after BN recalibration on `train`,
      test: an optional test split, used only for the final report.
    example_inputs: what the model is traced with (a tensor, tuple or dict, batch included, as
      Torch-Pruning takes it), instead of one image of `train`; batch_to_inputs: a batch of `train` ->
      the model's input, for BN recalibration (default: the batch's first element). With `evaluate`,
      the model may return anything (a dict of segmentation maps, a tuple, features).
    A DataLoader contributes its dataset: autoprune draws its own seeded batches, so results repeat.
    out: the run folder to write; without it a temporary folder is used and removed when the result is
      garbage-collected (or at exit): `result.save(folder)` keeps a copy.
    verbose: print progress lines (evaluations, best so far, elapsed, ETA) through the `autoprune`
      logger; without it that logger is as quiet as the application's logging configuration leaves it.
    A latency budget that no timed candidate met gives `result.verified is False` and a warning.
    options: every other `autoprune search` option by its name (criterion="taylor", reconstruct=True,
      fidelity="auto", max_ratio=0.7, finetune_epochs=3, distill=True, workers=2, ...; see
      `autoprune search --help`), with the CLI's defaults.

    >>> result = autoprune.search(model, "50%FLOPs", train=train_set, heldout=val_set, evals=60)
    >>> result.pruned_model, result.policy.ratios, result.heldout_accuracy
    """
    budgets = [budget] if isinstance(budget, str) else list(budget)
    if isinstance(heldout, int) and not isinstance(heldout, bool):
        options["heldout"], heldout = heldout, None
    _check_arguments(model, options, data, train, heldout, test, evaluate)
    named_model = isinstance(model, str)
    cfg = SearchConfig(model=model if named_model else _model_label(model), budgets=budgets,
                       data=data or PYTHON_DATA, agent=agent, evals=evals, seed=seed, device=device,
                       out=Path(out) if out is not None else None, **options)
    inputs = None
    extras = {"evaluate": evaluate, "example_inputs": example_inputs, "batch_to_inputs": batch_to_inputs}
    if not (named_model and data is not None and not any(v is not None for v in extras.values())):
        inputs = _inputs(model, cfg, data, train, heldout, test, extras)
    return _run(cfg, inputs, verbose)


def _check_arguments(model, options: dict, data, train, heldout, test, evaluate) -> None:
    """search()'s refusals of its own arguments, one line each."""
    unknown = sorted(set(options) - _CONFIG_FIELDS)
    if unknown:
        raise UserError(f"unknown search option {', '.join(unknown)}: one of {', '.join(sorted(_CONFIG_FIELDS))}")
    if not isinstance(model, (str, nn.Module)):
        raise UserError(f"model must be a torch.nn.Module or a model name, not {type(model).__name__}")
    if data is not None and any(x is not None for x in (train, heldout, test)):
        raise UserError("give data= (a registered dataset) or train=/heldout=/test= (your own), not both")
    if data is None and train is None:
        raise UserError("give data= (a registered dataset, e.g. 'fashion-mnist') or train= (your training data)")
    if evaluate is not None and heldout is not None:
        raise UserError("give heldout= (scored by top-1) or evaluate= (your function), not both")


def _run(cfg: SearchConfig, inputs: Inputs | None, verbose: bool) -> SearchResult:
    """The CLI's prepare + execute; a temporary run folder when no out= was given, removed with the result."""
    temporary = cfg.out is None
    if temporary:
        cfg.out = Path(tempfile.mkdtemp(prefix="autoprune-run-"))
    try:
        with _logging_to_stderr(verbose):
            out_dir, setup = prepare_search(cfg, inputs=inputs)
            with ProgressLines(cfg.n_evals(), log.info) as lines:
                summary = execute_search(out_dir, setup, on_result=lines.on_result, on_stage=lines.on_stage,
                                         on_progress=lines.on_progress)
    except BaseException:
        if temporary:  # refused or failed: a temporary folder is nobody's to resume
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    result = SearchResult(summary, setup.policy, setup.pruned, setup.bundle.model, out_dir, setup)
    if temporary:
        weakref.finalize(result, shutil.rmtree, out_dir, ignore_errors=True)
    if result.verified is False:
        warnings.warn("no timed candidate measured within the latency budget: result.verified is False "
                      "(the CLI exits 3 for this); see result.summary['latency_verification']", stacklevel=3)
    return result


@contextlib.contextmanager
def _logging_to_stderr(verbose: bool):
    """verbose=True: the `autoprune` logger's INFO lines (progress included) on stderr for this call."""
    if not verbose:
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("autoprune: %(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def apply(model: nn.Module, policy: Policy | str | Path | SearchResult, *, train: DataArg = None,
          data: str | None = None, device: str = "auto", example_inputs=None,
          batch_to_inputs: Callable | None = None) -> nn.Module:
    """A physically pruned copy of `model` as `policy` says (a Policy, a policy.json, its run folder, or a result).

    The same channels go as in the search (its criterion, seed, data-aware orders); BN statistics are
    recalibrated on `train` (your Dataset/DataLoader) or the registered dataset `data` -- the search's
    calibration batches when it is the same data -- and without either they are left as they are.
    `example_inputs` / `batch_to_inputs`: as the search was given them.

    >>> pruned = autoprune.apply(model, "runs/mine/policy.json", train=train_set)
    """
    if isinstance(policy, SearchResult):
        policy = policy.policy
    elif not isinstance(policy, Policy):
        path = Path(policy)
        path = path / "policy.json" if path.is_dir() else path
        if not path.exists():
            raise UserError(f"policy file not found: {path}")
        policy = Policy.load(path)
    if train is not None and data is not None:
        raise UserError("give train= (your data) or data= (a registered dataset), not both")
    meta = RunSummary.read(policy.meta)
    calib, shape = None, None
    if train is not None or data is not None:
        split = (_dataset(train, "train") if train is not None
                 else load_data(data, heldout_size=meta.heldout_images or 5000).train)
        calib = run_calibration(meta, split, batch_to_inputs)
        shape = tuple(split[0][0].shape)  # for a hand-made Policy that does not record its input shape
    pruned, _ = prune_as_policy(model, policy, calib, device, recalibrate=calib is not None, input_shape=shape,
                                example_inputs=example_inputs)
    return pruned


def _model_label(model: nn.Module) -> str:
    cls = type(model)
    return f"python:{cls.__module__}.{cls.__qualname__}"


def _dataset(split: DataArg, what: str) -> Dataset:
    ds = split.dataset if isinstance(split, DataLoader) else split
    if not isinstance(ds, Dataset):
        raise UserError(f"{what} must be a torch Dataset or DataLoader, not {type(split).__name__}")
    try:
        n, first = len(ds), ds[0]
    except Exception as exc:  # the user's own dataset code
        raise UserError(f"{what}[0] failed: {one_line(exc)}") from exc
    if n < 1 or not isinstance(first, (tuple, list)) or len(first) < 2 or not torch.is_tensor(first[0]):
        raise UserError(f"{what} must yield (image tensor, label) pairs; its first item is {type(first).__name__}")
    return ds


def _inputs(model: nn.Module | str, cfg: SearchConfig, data: str | None, train: DataArg, heldout: DataArg,
            test: DataArg, extras: dict) -> Inputs:
    """The engine's bundles from the user's objects (or a registered dataset with a model object)."""
    if data is not None:
        bundle_data = load_data(data, heldout_size=cfg.heldout)
    else:
        train_ds = _dataset(train, "train")
        held_ds = None if heldout is None else _dataset(heldout, "heldout")
        test_ds = None if test is None else _dataset(test, "test")
        if held_ds is None and extras["evaluate"] is None:  # carved from the training set, as the CLI does
            train_ds, held_ds = carve_heldout("train", train_ds, cfg.heldout)
        x0 = train_ds[0][0]
        bundle_data = DataBundle(PYTHON_DATA, 0, x0.shape[0], tuple(x0.shape[1:]), train_ds, held_ds, test_ds,
                                 augment=False)
    bundle_data = dataclasses.replace(bundle_data, **{k: v for k, v in extras.items() if v is not None})
    if isinstance(model, str):
        from autoprune.zoo import build_model

        bundle = build_model(model, num_classes=bundle_data.num_classes, in_channels=bundle_data.in_channels,
                             dataset=bundle_data.name, weights=cfg.weights, seed=cfg.seed)
    else:
        module = copy.deepcopy(model).cpu().eval()  # the caller's model stays as it was
        bundle = ModelBundle(module, cfg.model, PYTHON_MODEL, bundle_data.in_channels,
                             _classes(module, bundle_data, extras["example_inputs"]))
    bundle_data = bundle_data.with_channels(bundle.in_channels)
    if not bundle_data.num_classes:
        bundle_data = dataclasses.replace(bundle_data, num_classes=bundle.num_classes)
    return Inputs(bundle, bundle_data)


def _classes(model: nn.Module, data: DataBundle, example=None) -> int:
    """The model's output width (dim 1 of its first output tensor), from one forward pass on `example`
    or a zero image of the data's shape; 0 for an output without one (scored by an evaluate function)."""
    from autoprune.probe import call_model, output_shapes

    x = example if example is not None else torch.zeros(2, data.in_channels, *data.input_size)
    try:
        with torch.no_grad():
            out = call_model(model, x)
    except Exception as exc:  # the user's model on the user's input shape: one line
        shape = "example_inputs" if example is not None else f"input shape {(data.in_channels, *data.input_size)}"
        raise UserError(f"the model fails on the data's {shape}: {one_line(exc)}") from exc
    shapes = output_shapes(out)
    return int(shapes[0][1]) if shapes and len(shapes[0]) > 1 else 0
