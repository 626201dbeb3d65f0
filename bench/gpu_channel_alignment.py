"""Does the kept-channel count's alignment decide a pruned CIFAR ResNet's GPU latency?

On an H200 at batch 1 the searched ResNet-20/56 policies (kept counts on a 1-channel grid) ran
slower than the unpruned model. This times, in one interleaved run, the base model against
uniform policies whose kept counts are multiples of 8 (half the channels) and off by one either
way (more and fewer channels), at batch 1 and 256, in both memory layouts.

    python bench/gpu_channel_alignment.py --device cuda --out bench/results/gpu_channel_alignment.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from autoprune.cost.measured import median_latencies_ms
from autoprune.graph import build_graph
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo import build_model

SHAPE = (1, 28, 28)


def kept_policy(space: ChannelSpace, kept: dict[int, int]) -> np.ndarray:
    """Ratios that keep kept[c] channels of every group that has c."""
    return np.array([1.0 - kept[int(c)] / int(c) for c in space.channels])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_channel_alignment.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    variants = {"aligned 8/16/32": {16: 8, 32: 16, 64: 32}, "plus one 9/17/33": {16: 9, 32: 17, 64: 33},
                "minus one 7/15/31": {16: 7, 32: 15, 64: 31}}
    rows = []
    for name in args.models:
        model = build_model(name, num_classes=10, in_channels=1, weights="random").model.eval()
        space = ChannelSpace(build_graph(model, SHAPE, model_id=name), round_to=1)
        models = {"base": model} | {v: space.apply(model, kept_policy(space, k)) for v, k in variants.items()}
        for v, m in models.items():  # the widths each variant really has
            print(name, v, sorted({c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)}))
        for layout in ("contiguous", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            for batch in (1, 256):
                ms = median_latencies_ms([(m, SHAPE) for m in models.values()], batch=batch, device=device,
                                         min_seconds=0.5, rounds=5, memory_format=fmt)
                row = {"model": name, "layout": layout, "batch": batch} | {v: round(t, 3) for v, t in zip(models, ms)}
                rows.append(row)
                print(json.dumps(row))
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "cudnn_benchmark": torch.backends.cudnn.benchmark, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
