"""Quality-versus-speed analysis of sweep rows: the Pareto front, the best method per speed range, and which methods'
FID intervals overlap (those differences are not resolved at the sample size)."""

from __future__ import annotations

import math

SPEED_RANGES = ((1.2, 1.5), (1.5, 2.0), (2.0, 3.0), (3.0, math.inf))


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = False) -> list[int]:
    """Indices of the points no other point dominates, by increasing x (x = speed, higher is better; y = quality,
    lower is better unless `higher_is_better`). A point is dominated by one at least as fast and at least as good,
    better in one of the two; exact duplicates are all kept. Points with a missing coordinate are skipped."""
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(
        (i for i, (x, y) in enumerate(points) if _finite(x) and _finite(y)),
        key=lambda i: (-points[i][0], sign * points[i][1]),
    )
    front, best, best_x = [], math.inf, None  # best quality seen among faster (or equally fast) points
    for i in order:
        x, y = points[i][0], sign * points[i][1]
        if y < best or (y == best and x == best_x):
            front.append(i)
            best, best_x = y, x
    return sorted(front, key=lambda i: points[i][0])


def front_rows(rows: list[dict], quality: str = "fid") -> list[dict]:
    higher = quality == "psnr"
    pts = [(r.get("speedup"), r.get(quality)) for r in rows]
    return [rows[i] for i in pareto_front(pts, higher_is_better=higher)]


def overlaps(a: dict, b: dict, key: str = "fid_ci") -> bool:
    (lo1, hi1), (lo2, hi2) = a[key], b[key]
    return lo1 <= hi2 and lo2 <= hi1


def best_by_range(rows: list[dict], quality: str = "fid") -> list[dict]:
    """Per speed range: each method's best row in it (by quality), best first."""
    sign = 1.0 if quality == "psnr" else -1.0
    out = []
    for lo, hi in SPEED_RANGES:
        inside = [r for r in rows if _finite(r.get(quality)) and lo <= r["speedup"] < hi]
        best: dict[str, dict] = {}
        for r in inside:
            if r["method"] not in best or sign * r[quality] > sign * best[r["method"]][quality]:
                best[r["method"]] = r
        ranked = sorted(best.values(), key=lambda r: -sign * r[quality])
        out.append({"range": (lo, hi), "rows": ranked})
    return out


def _fmt_range(lo: float, hi: float) -> str:
    return f"> {lo:g}x" if math.isinf(hi) else f"{lo:g}-{hi:g}x"


def _fid(r: dict) -> str:
    lo, hi = r["fid_ci"]
    return f"{r['fid']:.2f} [{lo:.2f}, {hi:.2f}]"


def range_sentences(rows: list[dict]) -> list[str]:
    """For each speed range: the best method by FID, its margin over the next methods, and every overlap."""
    lines = []
    for group in best_by_range(rows, "fid"):
        name, ranked = _fmt_range(*group["range"]), [r for r in group["rows"] if r.get("fid_ci")]
        if not ranked:
            lines.append(f"* {name}: no method measured in this range.")
            continue
        top = ranked[0]
        line = f"* {name}: best FID {top['label']} ({top['speedup']:.2f}x), {_fid(top)}"
        if len(ranked) > 1:
            nxt = ranked[1]
            line += f"; next {nxt['label']} ({nxt['speedup']:.2f}x) {_fid(nxt)}, +{nxt['fid'] - top['fid']:.2f}"
        tied = [r["label"] for r in ranked[1:] if overlaps(top, r)]
        if tied:
            line += f". Its interval overlaps those of {', '.join(tied)}: not resolved at this sample size"
        lines.append(line + ".")
    return lines
