"""The sweep's outputs: compare.json (the rows), compare.md (a table per method with 95 % intervals, the Pareto
fronts, the best method per speed range and the FID intervals that overlap) and compare.png (FID and PSNR against
measured speedup, one curve per method, the Pareto front drawn)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..utils.io import atomic_output, atomic_write_text
from .pareto import front_rows, range_sentences
from .sweep_store import json_safe


def _num(v, fmt: str) -> str:
    if v is None:
        return "–"
    return "∞" if isinstance(v, float) and math.isinf(v) else format(v, fmt)


def with_interval(v, ci, fmt: str) -> str:
    """'15.36 [12.74, 19.18]'; the value alone where there is no interval or the value is infinite (identical
    images' PSNR); '–' for a missing value."""
    if v is None or (isinstance(v, float) and math.isinf(v)):
        return _num(v, fmt)
    if not ci or ci[0] is None:
        return _num(v, fmt)
    return f"{_num(v, fmt)} [{_num(ci[0], fmt)}, {_num(ci[1], fmt)}]"


HEAD = (
    "| knob: {knob} | steps | executed sub-layers | MACs/img (G) | MAC speedup | latency (s) [min, max] | speedup "
    "| MNIST-FID [95 % CI] | class acc. | precision | recall | PSNR vs uncached, dB [95 % CI] |"
)


def _line(r: dict) -> str:
    executed = r["executed"] if isinstance(r["executed"], int) else f"{r['executed']:.1f}"
    lo, hi = r.get("latency_spread_s") or (None, None)
    acc = None if r.get("accuracy") is None else 100 * r["accuracy"]
    cells = [
        _num(r["knob"]["value"], "g"),
        str(r["steps"]),
        f"{executed}/{r['total']}",
        _num(r["macs_per_image"] / 1e9, ".3f"),
        _num(r.get("mac_speedup"), ".2f") + "x",
        f"{r['latency_s']:.3f} [{_num(lo, '.3f')}, {_num(hi, '.3f')}]",
        _num(r["speedup"], ".2f") + "x",
        with_interval(r.get("fid"), r.get("fid_ci"), ".2f"),
        _num(acc, ".1f") + (" %" if acc is not None else ""),
        _num(r.get("precision"), ".3f"),
        _num(r.get("recall"), ".3f"),
        with_interval(r.get("psnr"), r.get("psnr_ci"), ".1f"),
    ]
    return "| " + " | ".join(cells) + " |"


def method_tables(rows: list[dict]) -> str:
    parts = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["speedup"])
        head = HEAD.format(knob=mine[0]["knob"]["name"])
        parts.append(f"#### {method}\n\n{head}\n|" + "---|" * (head.count("|") - 1) + "\n")
        parts[-1] += "\n".join(_line(r) for r in mine)
    return "\n\n".join(parts)


def front_text(rows: list[dict], quality: str) -> str:
    front = front_rows(rows, quality)
    if not front:
        return "(no finite values)"
    return " → ".join(f"{r['label']} ({r['speedup']:.2f}x, {quality} {r[quality]:.2f})" for r in front)


def report_text(rows: list[dict], header: str) -> str:
    parts = [header, "### Rows by method", method_tables(rows)]
    if any(r.get("fid") is not None for r in rows):
        parts += ["### Pareto front, MNIST-FID against measured speedup", front_text(rows, "fid")]
        parts += ["### Best by FID per speed range", "\n".join(range_sentences(rows))]
    finite = [r for r in rows if r.get("psnr") is not None and math.isfinite(r["psnr"])]
    parts += ["### Pareto front, PSNR against measured speedup", front_text(finite, "psnr")]
    return "\n\n".join(parts) + "\n"


def write_sweep_report(rows: list[dict], out: Path, header: str, title: str) -> str:
    text = report_text(rows, header)
    atomic_write_text(text, out / "compare.md")
    atomic_write_text(json.dumps(json_safe(rows), indent=1) + "\n", out / "compare.json")
    plot_sweep(rows, out / "compare.png", title)
    return text


def _curve(ax, rows, key, style):
    pts = sorted((r["speedup"], r[key], r.get(f"{key}_ci")) for r in rows if r.get(key) is not None)
    pts = [p for p in pts if math.isfinite(p[1])]
    if not pts:
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    err = [[y - (ci[0] if ci else y) for _, y, ci in pts], [(ci[1] if ci else y) - y for _, y, ci in pts]]
    ax.errorbar(xs, ys, yerr=err, ms=4, lw=1, capsize=2, **style)


def _reference_band(ax, rows, key):
    ref = next((r for r in rows if r["method"] == "uncached" and r.get(key) is not None), None)
    if ref is None or not math.isfinite(ref[key]):
        return
    ax.axhline(ref[key], color="k", lw=0.8, ls=":", label="uncached")
    if ref.get(f"{key}_ci"):
        ax.axhspan(*ref[f"{key}_ci"], color="k", alpha=0.06)


def plot_sweep(rows: list[dict], path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    markers, colors = "os^vD<>phX*P", plt.get_cmap("tab20").colors  # 15+ methods: more than the default 10 colours
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "uncached"]
    for ax, key, label in zip(axes, ("fid", "psnr"), ("MNIST-FID (lower is better)", "PSNR vs uncached (dB)")):
        _reference_band(ax, rows, key)
        for i, m in enumerate(methods):
            style = {"marker": markers[i % len(markers)], "color": colors[(2 * i) % 20 + (2 * i) // 20], "label": m}
            _curve(ax, [r for r in rows if r["method"] == m], key, style)
        finite = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        front = front_rows(finite, key)
        if front:
            ax.plot([r["speedup"] for r in front], [r[key] for r in front], "k--", lw=1, alpha=0.6, label="Pareto")
        ax.set(xlabel="measured speedup", ylabel=label, yscale="log" if key == "fid" and finite else "linear")
        ax.grid(alpha=0.3)
    for ax in axes[::-1]:  # the legend goes on the PSNR panel, or on the FID one when PSNR has nothing to show
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best", ncol=2)
            break
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path) as tmp:  # a crash mid-write never leaves half a picture under the final name
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
