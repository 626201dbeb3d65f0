"""One table from several search_quality result files that differ in an engine setting.

    python bench/compare_variants.py --out bench/results/variants-NAME.md FILE.json [FILE.json ...]

Each file is one run of bench/search_quality.py (same budget, evaluations, seeds, held-out size);
its setting (criterion, --reconstruct, --stem-max-ratio, --prune-stem) labels its searcher rows.
Held-out and test accuracy are medians over seeds (min-max); the rows are what each file holds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def setting(args: dict) -> str:
    parts = [f"criterion {args.get('criterion', 'l2')}"]
    if args.get("reconstruct"):
        top = args.get("reconstruct_top") or 0
        parts.append(f"reconstruct {'top-' + str(top) if top else 'every candidate'}")
    if args.get("fidelity", "full") != "full":
        parts.append(f"fidelity {args['fidelity']}")
    if args.get("stem_max_ratio"):
        parts.append(f"stem ≤ {args['stem_max_ratio']:g}")
    elif args.get("prune_stem"):
        parts.append("stem prunable")
    return ", ".join(parts)


def spread(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    v = [x * scale for x in values]
    return f"{statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f})"


def rows(result: dict, source: str) -> list[tuple]:
    out = []
    for model in result["args"]["models"]:
        for row in dict.fromkeys(r["row"] for r in result["runs"] if r["model"] == model and r["kind"] == "searcher"):
            runs = [r for r in result["runs"] if r["model"] == model and r["row"] == row and "heldout" in r]
            seconds = [r["search_seconds"] for r in runs]
            out.append((model, row, setting(result["args"]), spread([r["heldout"] for r in runs]),
                        spread([r["test"] for r in runs]), f"{statistics.median(seconds):.0f}" if seconds else "–",
                        " ".join(str(r["seed"]) for r in runs), source))
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    results = [(json.loads(f.read_text()), f) for f in args.files]
    first = results[0][0]["args"]
    table = [r for res, f in results for r in rows(res, f.name)]
    table.sort(key=lambda r: (r[0], r[1]))
    lines = [f"# Engine settings side by side at {first['budget']}", "",
             "`python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]) + "`", "",
             f"{first['evals']} evaluations per searcher, held-out {first['heldout']} images, adaptive BN on "
             f"{first.get('calib_batches', 20)}×64 training images, no fine-tuning. Accuracies: median over seeds "
             "(min–max), top-1 %; wall s: median search time per seed (re-ranking included). Each row's command "
             "is at the top of its source file.", "",
             "| model | row | setting | held-out | test | wall s | seeds | source |",
             "|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    md = "\n".join(lines) + "\n"
    args.out.write_text(md)
    print(md)
    return md


if __name__ == "__main__":
    main()
