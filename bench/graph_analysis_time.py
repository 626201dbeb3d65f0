"""Graph analysis time of every model in the timm and segmentation matrices, at 64x64, on this CPU.

    python bench/graph_analysis_time.py --out bench/results/graph_analysis_time-timm-64.md

`autoprune.graph.build_graph` on each (random weights, batch 1): tracing, Torch-Pruning's grouping,
the two-step probe of every group. With `--tp-walk` the grouping uses Torch-Pruning 1.6's own walk
as it ships (none of `autoprune.tp_extensions`' changes to it), as before them; a model taking longer than
`--limit` seconds is stopped and reported as such.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def _time_one(name: str, tp_walk: bool, queue) -> None:
    import torch

    torch.set_num_threads(1)
    from autoprune import tp_extensions
    from autoprune.graph import build_graph

    if tp_walk:  # Torch-Pruning 1.6's get_pruning_group as it ships: nothing of tp_extensions' walk installed
        tp_extensions._installed = True
    if name in ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"):
        from seg_zoo import segmentation_model

        model = segmentation_model(name)
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=10)
    start = time.perf_counter()
    try:
        graph = build_graph(model, (3, 64, 64), model_id=name)
        queue.put((time.perf_counter() - start, len(graph.groups), len(graph.frozen), ""))
    except Exception as exc:  # noqa: BLE001 -- a refusal is a row too
        queue.put((time.perf_counter() - start, 0, 0, str(exc).splitlines()[0][:80]))


def main() -> None:
    from test_timm_matrix import FAMILIES

    from seg_zoo import SEGMENTATION

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tp-walk", action="store_true")
    ap.add_argument("--limit", type=float, default=300.0)
    ap.add_argument("--load", default="nothing else running", help="what else ran on the machine, for the header")
    ap.add_argument("--models", nargs="*", help="default: every model of the timm and segmentation matrices")
    args = ap.parse_args()
    rows = []
    for name in args.models or [m for m, _ in FAMILIES.values()] + list(SEGMENTATION):
        queue = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=_time_one, args=(name, args.tp_walk, queue))
        proc.start()
        proc.join(args.limit)
        if proc.is_alive():
            proc.kill()
            rows.append((name, f"> {args.limit:.0f}", "", "", "stopped"))
        else:
            s, groups, frozen, note = queue.get()
            rows.append((name, f"{s:.1f}", groups, frozen, note))
        print(*rows[-1], flush=True)
    text = ["# Graph analysis time, 64x64, one thread", "",
            f"`python bench/graph_analysis_time.py{' --tp-walk' if args.tp_walk else ''}"
            f"{' --models ' + ' '.join(args.models) if args.models else ''}` "
            f"({time.strftime('%Y-%m-%d')}, 2-core CPU, {args.load})", "",
            "| model | seconds | groups searched | groups left whole | note |", "|---|---|---|---|---|"]
    text += [f"| `{n}` | {s} | {g} | {f} | {note} |" for n, s, g, f, note in rows]
    if args.out:
        args.out.write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
