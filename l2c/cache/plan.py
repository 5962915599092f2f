"""Cache plans: which sub-layers are computed at which model evaluation.

A plan is a boolean tensor `compute` of shape (S, L): S model evaluations in sampling order (step 0 is the first,
noisiest; for DPM-Solver-2 singlestep an outer step is two evaluations), L sub-layers in router order. A False
entry reuses the output the sub-layer produced the last time it was computed. Step 0 must compute everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def cache_steps_for(schedule: str, num_steps: int) -> list[int]:
    """The evaluations a router may cache, in sampling order.

    "alternate" (DiT / DDIM, spec §1.4): every second evaluation, starting with a full one: 1, 3, 5, ...
        (for even N these are the official even respaced indices k = N - 1 - j).
    "shifted" (U-ViT / DPM-Solver-2 singlestep): the evaluations at outer times t_i, i >= 1, i.e. j = 2, 4, ...;
        each reuses the intermediate evaluation just before it (paper App. B.1).
    """
    if schedule == "alternate":
        return list(range(1, num_steps, 2))
    if schedule == "shifted":
        return list(range(2, num_steps, 2))
    raise ValueError(f"unknown cache schedule {schedule!r}; use 'alternate' or 'shifted'")


@dataclass
class CachePlan:
    compute: torch.Tensor  # bool (S, L): True = compute the sub-layer at this evaluation

    def __post_init__(self):
        self.compute = torch.as_tensor(self.compute, dtype=torch.bool).cpu()
        if self.compute.ndim != 2 or self.compute.shape[1] % 2:
            raise ValueError(f"a plan is (steps, 2 * blocks) booleans, got shape {tuple(self.compute.shape)}")
        if not bool(self.compute[0].all()):
            raise ValueError("step 0 of a plan must compute every sub-layer: there is nothing cached yet")

    @classmethod
    def full(cls, num_steps: int, num_sublayers: int) -> "CachePlan":
        return cls(torch.ones(num_steps, num_sublayers, dtype=torch.bool))

    @property
    def num_steps(self) -> int:
        return self.compute.shape[0]

    @property
    def num_sublayers(self) -> int:
        return self.compute.shape[1]

    def keep(self) -> torch.Tensor:
        """(S, L) True where the output computed at this step is reused later (only those are stored)."""
        # An output is needed later exactly when the next step reuses it (a reuse keeps the stored tensor alive).
        keep = torch.zeros_like(self.compute)
        keep[:-1] = self.compute[:-1] & ~self.compute[1:]
        return keep

    def executed_per_step(self) -> list[int]:
        return self.compute.sum(1).tolist()

    def summary(self, steps: list[int] | None = None) -> dict:
        """Executed counts over `steps` (default: all), with the attention / MLP split."""
        c = self.compute if steps is None else self.compute[steps]
        return {
            "executed": int(c.sum()),
            "total": int(c.numel()),
            "executed_attn": int(c[:, 0::2].sum()),
            "executed_mlp": int(c[:, 1::2].sum()),
            "total_attn": int(c[:, 0::2].numel()),
            "total_mlp": int(c[:, 1::2].numel()),
        }
