"""NNI 2.10.1's half of bench/export_roundtrip.py: runs inside the NNI virtualenv, imports only torch and NNI.

Rebuilds the unpruned model three ways, as an NNI user would, and pickles each rebuilt model for the
caller (which counts MACs and scores them with autoprune's own evaluator in the main virtualenv):

- nni_config_plain: ``L2NormPruner(model, config_list)`` + ``ModelSpeedup`` (NNI's default mode)
- nni_config_dependency_aware: the same with ``mode="dependency_aware"``
- nni_masks: ``ModelSpeedup(model, dummy_input, nni_masks.pt)`` -- no NNI pruner, autoprune's channels

Usage: python export_roundtrip_nni.py WORK_DIR  (WORK_DIR holds job.json, base.pt and the exports;
written by export_roundtrip.py). Results: WORK_DIR/nni_results.json and WORK_DIR/rebuilt-<variant>.pt.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # NNI 2.x's torch.load calls, torch >= 2.6

import torch  # noqa: E402

log = logging.getLogger("export_roundtrip_nni")


def main(work: Path) -> None:
    job = json.loads((work / "job.json").read_text())
    sys.path.insert(0, job["repo"])  # the pickled base model's class (autoprune.zoo) needs only torch
    torch.set_num_threads(int(job.get("threads", 1)))
    import nni
    from nni.compression.pytorch.pruning import L2NormPruner
    from nni.compression.pytorch.speedup import ModelSpeedup

    base = torch.load(work / "base.pt", weights_only=False).eval()
    dummy = torch.randn(1, *job["input_shape"])
    config_list = json.loads((work / "nni_config_list.json").read_text())

    def by_pruner(**kwargs):
        def build(model):
            pruner = L2NormPruner(model, config_list, **kwargs)
            _, masks = pruner.compress()
            pruner._unwrap_model()  # as NNI's speedup tutorial does before ModelSpeedup
            return masks
        return build

    def by_masks(model):
        return torch.load(work / "nni_masks.pt")

    variants = {"nni_config_plain": by_pruner(),
                "nni_config_dependency_aware": by_pruner(mode="dependency_aware", dummy_input=dummy),
                "nni_masks": by_masks}
    results = {"nni_version": nni.__version__, "torch_version": torch.__version__, "variants": {}}
    for name, make_masks in variants.items():
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        try:
            masks = make_masks(model)
            n_masked = len(masks)  # ModelSpeedup adds the masks it infers to the dict
            ModelSpeedup(model, dummy, masks).speedup_model()
        except Exception as exc:  # NNI fails in many types; the error text is the result
            results["variants"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                         "traceback": traceback.format_exc(limit=4)}
            log.warning("%s failed: %s", name, exc)
            continue
        model.eval()
        torch.save(model, work / f"rebuilt-{name}.pt")
        results["variants"][name] = {"file": f"rebuilt-{name}.pt", "seconds": round(time.perf_counter() - t0, 2),
                                     "masked_layers": n_masked}
    (work / "nni_results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main(Path(sys.argv[1]))
