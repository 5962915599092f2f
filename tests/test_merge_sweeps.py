"""benchmarks/merge_sweeps.py: sweeps of one curve merge into one report; sweeps of different curves are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "merge_sweeps.py"
SETTINGS = {
    "model": "dit-mnist",
    "checkpoint": None,
    "sampler": "ddim",
    "steps": 50,
    "guidance_scale": 1.5,
    "eta": 0.0,
    "images": 1000,
    "classes": "i mod classes",
}


def row(method, label, speedup, psnr):
    return {
        "method": method,
        "label": label,
        "knob": {"name": "k", "value": 1},
        "speedup": speedup,
        "mac_speedup": speedup,
        "psnr": psnr,
        "psnr_ci": [None, None] if psnr is None else [psnr - 1, psnr + 1],
        "fid": 12.0,
        "fid_ci": [11.0, 13.0],
        "steps": 50,
        "executed": 600,
        "total": 600,
        "macs_per_image": 2.9e9 / speedup,
        "latency_s": 7.5 / speedup,
    }


def sweep(folder: Path, rows, **settings) -> Path:
    folder.mkdir()
    (folder / "sweep.jsonl").write_text(json.dumps({"settings": {**SETTINGS, **settings}}) + "\n")
    (folder / "compare.json").write_text(json.dumps(rows))
    return folder


def test_sweeps_of_one_curve_merge_and_others_are_refused(tmp_path):
    base = sweep(tmp_path / "a", [row("uncached", "uncached", 1.0, None), row("fewer-steps", "DDIM-25", 2.0, 36.0)])
    learned = [
        row("uncached", "uncached", 1.0, None),
        row("learned", "learned 0.5", 1.8, 50.0),
        row("fewer-steps", "DDIM-25", 2.0, 36.2),
    ]
    budgets = sweep(tmp_path / "b", learned)
    out = tmp_path / "merged"
    run = subprocess.run([sys.executable, SCRIPT, str(out), str(base), str(budgets)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = json.loads((out / "compare.json").read_text())
    assert [r["label"] for r in rows] == ["uncached", "DDIM-25", "learned 0.5", "DDIM-25 (b)"]  # nothing dropped
    assert (out / "compare.png").stat().st_size > 0
    assert "learned 0.5 (1.80x, psnr 50.00)" in (out / "compare.md").read_text()  # on the merged front
    other = sweep(tmp_path / "c", learned, steps=20)
    run = subprocess.run(
        [sys.executable, SCRIPT, str(tmp_path / "m2"), str(base), str(other)], capture_output=True, text=True
    )
    assert run.returncode == 2 and run.stderr.strip().endswith("differs from " + str(base) + " in steps")
    assert not (tmp_path / "m2").exists()
