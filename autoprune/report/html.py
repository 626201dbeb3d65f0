"""The report's HTML: escaping, tables, figures, notes, number formats and the page around them.

Layer: the bottom of autoprune.report; it imports nothing of autoprune, and the run page
(`run.py`), the sweep page (`sweep.py`) and the console (`autoprune.ui`, for `speedup`) share it,
so both pages and the terminal word numbers alike.
"""
from __future__ import annotations

from html import escape

REPORT = "report.html"  # the page's file name in a run or sweep folder
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class Raw(str):
    """Table cell text that is HTML already."""


def esc(v) -> str:
    return v if isinstance(v, Raw) else escape(str(v))


def table(head: tuple, rows: list[tuple], cls: str = "") -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def figure(name: str, svg: str, caption: str) -> str:
    return f"<figure class=plot id='plot-{name}'>{svg}<figcaption>{esc(caption)}</figcaption></figure>"


def note(text: str) -> str:
    return f"<p class=note>{esc(text)}</p>"


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def seconds(v) -> str | None:
    return None if v is None else (f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min")


def speedup(base_ms: float, pruned_ms: float) -> str:
    """'1.25x faster', or '1.29x slower' when pruning made it slower (it can: see gpu_checks-h200.md)."""
    ratio = base_ms / pruned_ms
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;
 max-width:62rem;margin:1.5rem auto;padding:0 1rem}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem;border-bottom:1px solid #ddd}
.facts{color:#555;margin:.2rem 0 1rem}.note{color:#8a5a00;background:#fff8e5;padding:.4rem .6rem;border-radius:4px}
table{border-collapse:collapse;margin:.4rem 0;font-variant-numeric:tabular-nums}
th,td{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:right}th{background:#f6f6f6;white-space:nowrap}
.trials td:last-child{text-align:left}
td:first-child,th:first-child{text-align:left}figure{margin:.6rem 0 1.2rem}
figure svg{max-width:100%;height:auto;display:block}figcaption{color:#555;font-size:.9rem;max-width:48rem}
"""


def page(title: str, parts: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)} · autoprune report</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n<p class=facts>Written by autoprune report.</p></body></html>\n")
