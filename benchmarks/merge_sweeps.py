"""One picture and one Pareto front from several sweeps of the same curve: the baselines' sweep beside the learned
schedules' sweeps, which ran apart (`benchmarks/curves.sh CURVE baselines | budgets`). The sweeps must share the model,
sampler, steps, guidance and seeds; each row keeps the speedup measured against its own sweep's uncached run, and the
uncached row is the first sweep's. Writes compare.md (tables, Pareto fronts), compare.json and compare.png to OUT.

    python benchmarks/merge_sweeps.py docs/compare/curve-dit-mnist-ddim50 sweeps/dit-mnist-ddim50 \\
        sweeps/dit-mnist-ddim50-budgets
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.jobs.sweep_report import write_sweep_report  # noqa: E402

SAME = ("model", "checkpoint", "sampler", "steps", "guidance_scale", "eta", "images", "classes")  # what must agree


def settings(sweep: Path) -> dict:
    with open(sweep / "sweep.jsonl") as f:
        return json.loads(f.readline())["settings"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder for compare.md / .json / .png")
    p.add_argument("sweeps", nargs="+", help="sweep folders (l2c compare --sweep --out), baselines first")
    p.add_argument("--title", default=None, help="the picture's title")
    args = p.parse_args()
    sweeps = [Path(s) for s in args.sweeps]
    for s in sweeps:
        if not (s / "sweep.jsonl").is_file() or not (s / "compare.json").is_file():
            print(f"merge_sweeps: {s} is not a finished sweep (no sweep.jsonl / compare.json)", file=sys.stderr)
            return 2
    first = settings(sweeps[0])
    for s in sweeps[1:]:
        other = settings(s)
        differ = [k for k in SAME if first.get(k) != other.get(k)]
        if differ:
            print(f"merge_sweeps: {s} differs from {sweeps[0]} in {', '.join(differ)}", file=sys.stderr)
            return 2
    rows, labels = [], set()
    for s in sweeps:
        for r in json.loads((s / "compare.json").read_text()):
            if r["method"] == "uncached" and rows:
                continue  # the first sweep's uncached row
            if r["label"] in labels:  # the same point measured in two sweeps (or two files of one budget): keep both
                r = {**r, "label": f"{r['label']} ({s.name})"}
            labels.add(r["label"])
            rows.append(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = ", ".join(f"`{s}`" for s in sweeps)
    header = (
        f"## {first['model']}, {first['sampler']} {first['steps']}, {first['images']} images: merged sweeps\n\n"
        f"From {sources} (`benchmarks/merge_sweeps.py`); each row's speedup is measured against its own sweep's "
        "uncached run."
    )
    title = (
        args.title or f"{first['model']}, {first['sampler']} {first['steps']}: every method and the learned schedules"
    )
    write_sweep_report(rows, out, header, title)
    print(f"wrote {out}/compare.md, compare.json, compare.png: {len(rows)} rows from {len(sweeps)} sweeps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
