"""Render the quality table of a model card from the JSON that model_card_numbers.py writes.

    python benchmarks/card_table.py runs/dit-mnist-10k.json [--timing runs/dit-mnist-timing.json]

--timing takes the per-image sampling times from another run of model_card_numbers.py (for instance a shorter one
made alone on the machine, when the long quality run shared the CPU with other work).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def setting_name(key: str) -> str:
    sampler, steps = key.rsplit("-", 1)
    return f"DDIM-{steps}" if sampler == "ddim" else f"DPM-Solver-2, NFE-{steps}"


def render(results: dict, timing: dict | None = None) -> str:
    timing = timing or results
    rows = [
        "| setting | MNIST-FID | IS | precision | recall | class accuracy | sampling time / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, m in results.items():
        if not isinstance(m, dict) or "class_accuracy" not in m:
            continue
        seconds = timing[key]["seconds_per_image"]
        rows.append(
            f"| {setting_name(key)} | {m['fid']:.2f} | {m['inception_score']:.2f} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} | {100 * m['class_accuracy']:.1f} % | {1000 * seconds:.1f} ms |"
        )
    floor = results["floor_train_vs_test"]
    rows.append(
        f"| floor: {floor['n']} MNIST train images | {floor['fid']:.2f} | {floor['inception_score']:.2f} | "
        f"{floor['precision']:.3f} | {floor['recall']:.3f} | – | – |"
    )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="JSON written by model_card_numbers.py --json")
    p.add_argument("--timing", default=None, help="take seconds_per_image from this JSON instead")
    args = p.parse_args()
    results = json.loads(Path(args.results).read_text())
    timing = json.loads(Path(args.timing).read_text()) if args.timing else None
    print(
        f"Quality of {results['images']} samples per row (classes 0-9 in turn, seeds 0..{results['images'] - 1}, "
        f"guidance {results.get('cfg', 1.5)}) on {results['device']}:\n"
    )
    print(render(results, timing))


if __name__ == "__main__":
    main()
