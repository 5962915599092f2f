"""The sweep's resumable record: `sweep.jsonl` in the output folder, one JSON object per line.

Line 1 holds the run's settings (model, sampler, steps, guidance, seeds, batch, timing, ...); every later line is
one finished row. The file is rewritten whole through a temporary file and a rename after each row, so an
interrupted sweep leaves either the old or the new record, never half a row. Resuming with other settings is
refused: rows measured under different settings must not share a curve.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..utils.io import atomic_torch_save, atomic_write_text


def _key(method: str, value) -> tuple[str, float]:
    return method, float(value)


def json_safe(value):
    """NaN / ±inf -> None (JSON has neither), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class SweepStore:
    def __init__(self, out: str | Path, settings: dict):
        self.out = Path(out)
        self.path = self.out / "sweep.jsonl"
        self.settings = json.loads(json.dumps(settings))  # as it reads back from the file
        self.rows: list[dict] = []
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        lines = [json.loads(s) for s in self.path.read_text().splitlines() if s.strip()]
        stored = lines[0].get("settings", {}) if lines else {}
        diff = [k for k in sorted(set(stored) | set(self.settings)) if stored.get(k) != self.settings.get(k)]
        if diff:
            detail = "; ".join(f"{k}: {stored.get(k)!r} there, {self.settings.get(k)!r} now" for k in diff)
            raise ValueError(
                f"{self.path} was written by a sweep with other settings ({detail}): resume with the same settings "
                "or choose another --out"
            )
        self.rows = lines[1:]

    def done(self, method: str, value) -> bool:
        return any(_key(r["method"], r["knob"]["value"]) == _key(method, value) for r in self.rows)

    def row(self, method: str, value) -> dict | None:
        return next((r for r in self.rows if _key(r["method"], r["knob"]["value"]) == _key(method, value)), None)

    def append(self, row: dict) -> None:
        self.rows.append(json_safe(row))
        lines = [json.dumps({"settings": self.settings})] + [json.dumps(r) for r in self.rows]
        atomic_write_text("\n".join(lines) + "\n", self.path)

    # The uncached images every row's PSNR is measured against: kept so a resumed sweep need not sample them again.
    @property
    def reference_path(self) -> Path:
        return self.out / "reference.pt"

    def save_reference(self, images) -> None:
        import torch

        atomic_torch_save({"images": torch.from_numpy(images), "settings": self.settings}, self.reference_path)

    def load_reference(self):
        import torch

        if not self.reference_path.exists():
            return None
        saved = torch.load(self.reference_path, weights_only=True)
        return saved["images"].numpy() if saved.get("settings") == self.settings else None
