"""Cache plans: what each sub-layer does at each model evaluation.

A plan covers S model evaluations in sampling order (evaluation 0 is the first, noisiest; for DPM-Solver-2
singlestep an outer step is two evaluations) and L sub-layers in router order. Each cell holds one action:

* COMPUTE:   run the sub-layer.
* REUSE:     return the output it produced the last time it was computed, however many evaluations ago.
* FORECAST1: extrapolate its last two computed outputs linearly (Taylor / Newton order 1).
* FORECAST2: extrapolate its last three computed outputs with a quadratic (order 2; see `form`).
* DROP:      the sub-layer contributes zero (Learning-to-Drop; a baseline, not a cache action).
* FOCA:      FoCa's predictor-corrector (a BDF2 step Heun-corrected against the last computed slope, recursive across
             the evaluations not computed; l2c.cache.forecast): order-1 history plus one slope buffer.

`CachePlan(compute)` with a boolean (S, L) tensor is the paper's form (False = reuse); `CachePlan.from_actions`
takes an integer tensor of the constants above. Evaluation 0 must compute everything. A forecast falls back to a
lower order (down to reuse) while the sub-layer has not yet been computed often enough.

Positions: by default evaluation j sits at j. `positions` (one number per evaluation, monotone: the sampler's t, σ
or log-SNR, l2c.cache.positions) measures every forecast gap in the sampler's own variable instead.

Forecast forms, with f0, f1, f2 the outputs of the last computed evaluations j0 > j1 > j2 and k = j - j0:
* "newton":     the interpolating polynomial through the points (Newton divided differences, exact for any gaps):
                f0 + D1·k + D2·k·(k + j0 - j1),  D1 = (f0 - f1)/(j0 - j1),  D2 = (D1 - D1')/(j0 - j2).
* "taylorseer": TaylorSeer's own form, f0 + Σ_i F_i·k^i / i!, where F_{i+1} = (F_i(new) - F_i(old)) / (j0 - j1)
                divides every order by the latest gap; with a fixed interval N it is f0 + Σ Δ^i f0 · k^i/(i!·N^i).
                Same as "newton" at order 1; at order 2 its term is k²/2 where the polynomial has k·(k + N)/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .layout import ATTENTION_KINDS, pair_kinds

COMPUTE, REUSE, FORECAST1, FORECAST2, DROP, FOCA = 0, 1, 2, 3, 4, 5
ACTION_NAMES = ("compute", "reuse", "forecast1", "forecast2", "drop", "foca")
FORECAST_FORMS = ("newton", "taylorseer")
# What a non-computed action reads from the sub-layer's history: -1 nothing, 0 the last output, p differences.
_READS = {REUSE: 0, FORECAST1: 1, FORECAST2: 2, DROP: -1, FOCA: 1}
_FORECASTS = (FORECAST1, FORECAST2, FOCA)


def cache_steps_for(schedule: str, num_steps: int) -> list[int]:
    """The evaluations a router may cache, in sampling order.

    "alternate" (DiT / DDIM): every second evaluation, starting with a full one: 1, 3, 5, ...
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
    actions: torch.Tensor | None = None  # int8 (S, L) of COMPUTE / REUSE / ...; None: reuse wherever not computed
    form: str = "newton"  # forecast form: "newton" or "taylorseer" (see the module docstring)
    max_skip: int | None = None  # cap on consecutive non-computed evaluations of one sub-layer (None: no cap)
    positions: tuple[float, ...] | None = None  # each evaluation's position for forecasts (None: its index)

    def __post_init__(self):
        self.compute = torch.as_tensor(self.compute, dtype=torch.bool).cpu()
        if self.actions is None:
            self.actions = torch.where(self.compute, COMPUTE, REUSE)
        self.actions = torch.as_tensor(self.actions).to(torch.int8).cpu()
        if self.positions is not None:
            self.positions = tuple(float(p) for p in self.positions)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError unless the plan is well formed (the engine checks again before attaching)."""
        # (steps, sub-layers): 2 per block for DiT / U-ViT, 3 for PixArt (attn1, attn2, ff), any count in general
        if self.compute.ndim != 2 or self.compute.shape[1] < 1:
            raise ValueError(f"a plan is (steps, sub-layers) booleans, got shape {tuple(self.compute.shape)}")
        if not bool(self.compute[0].all()):
            raise ValueError("step 0 of a plan must compute every sub-layer: there is nothing cached yet")
        self._check_actions()
        if self.form not in FORECAST_FORMS:
            raise ValueError(f"unknown forecast form {self.form!r}; use one of {FORECAST_FORMS}")
        self._check_cap()
        self._check_positions()

    def _check_actions(self) -> None:
        if self.actions.shape != self.compute.shape:
            raise ValueError(f"actions {tuple(self.actions.shape)} and compute {tuple(self.compute.shape)} differ")
        bad = (self.actions < COMPUTE) | (self.actions > FOCA)
        if bool(bad.any()):
            raise ValueError(f"unknown action {int(self.actions[bad][0])}; use 0..5 ({', '.join(ACTION_NAMES)})")
        if not torch.equal(self.actions == COMPUTE, self.compute):
            raise ValueError("`compute` must be exactly the cells whose action is COMPUTE (use CachePlan.from_actions)")

    def _check_cap(self) -> None:
        if self.max_skip is None:
            return
        if self.max_skip < 0:
            raise ValueError(f"max_skip must be >= 0 (or None for no cap), got {self.max_skip}")
        runs = self.skip_runs()
        worst = int(runs.max())
        if worst > self.max_skip:
            step, sub = (int(v) for v in (runs == worst).nonzero()[0])
            raise ValueError(
                f"sub-layer {sub} is not computed for {worst} evaluations in a row (ending at evaluation {step}), "
                f"over the plan's cap max_skip={self.max_skip}"
            )

    def _check_positions(self) -> None:
        if self.positions is None:
            return
        p = self.positions
        if len(p) != self.num_steps:
            raise ValueError(f"{len(p)} positions for a plan of {self.num_steps} evaluations")
        gaps = [b - a for a, b in zip(p, p[1:])]
        if not all(math.isfinite(v) for v in p) or not (all(g > 0 for g in gaps) or all(g < 0 for g in gaps)):
            raise ValueError("forecast positions must be finite and strictly monotone (one per evaluation)")

    def at(self, positions) -> "CachePlan":
        """This plan with forecasts positioned at `positions` (one per evaluation; None: the evaluation index)."""
        return CachePlan(self.compute, self.actions, self.form, self.max_skip, positions)

    @classmethod
    def from_actions(cls, actions, form: str = "newton", max_skip: int | None = None, positions=None) -> "CachePlan":
        """A plan from an integer (S, L) tensor of COMPUTE / REUSE / FORECAST1 / FORECAST2 / DROP / FOCA."""
        actions = torch.as_tensor(actions).to(torch.int8)
        return cls(actions == COMPUTE, actions, form, max_skip, positions)

    @classmethod
    def full(cls, num_steps: int, num_sublayers: int) -> "CachePlan":
        return cls(torch.ones(num_steps, num_sublayers, dtype=torch.bool))

    @property
    def num_steps(self) -> int:
        return self.compute.shape[0]

    @property
    def num_sublayers(self) -> int:
        return self.compute.shape[1]

    @property
    def forecasts(self) -> bool:
        return any(bool((self.actions == a).any()) for a in _FORECASTS)

    def skip_runs(self) -> torch.Tensor:
        """(S, L) int: how many evaluations in a row the sub-layer has not been computed, counting this one."""
        runs = torch.zeros(self.compute.shape, dtype=torch.long)
        for j in range(1, self.num_steps):
            runs[j] = torch.where(self.compute[j], 0, runs[j - 1] + 1)
        return runs

    # ------------------------------------------------------------------ what the engine stores
    def history_orders(self) -> torch.Tensor:
        """(S, L) int: at a computed cell, the divided differences kept after it (-1 nothing, 0 the output only,
        1 or 2 the output and differences up to that order), what later evaluations read; -1 elsewhere.

        The orders a later computation needs propagate back: extending order p at computation m needs order p - 1
        kept from computation m - 1. Fewer are available at the first computations (see `forecast_orders`).
        """
        need = torch.full(self.compute.shape, -1, dtype=torch.long)
        actions = self.actions.tolist()
        for sub in range(self.num_sublayers):
            later, reads = -1, -1  # need of the next computation; largest read since it
            for j in range(self.num_steps - 1, -1, -1):
                action = actions[j][sub]
                if action == COMPUTE:
                    need[j, sub] = later = max(reads, later - 1)
                    reads = -1
                else:
                    reads = max(reads, _READS[action])
        return need

    def forecast_orders(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(order of each forecast cell as executed, differences updated at each computed cell), both (S, L).

        A forecast of order p right after the c-th computation of its sub-layer runs at order min(p, c - 1):
        until enough points exist it falls back to a lower order, order 0 being a plain reuse. A FoCa cell counts
        its terms (1, or 2 once it holds its own slope S), and a computation after FoCa values 2 more for updating S
        (l2c.cache.forecast.SublayerHistory).
        """
        need = self.history_orders().tolist()
        actions = self.actions.tolist()
        used = torch.zeros(self.compute.shape, dtype=torch.long)
        updated = torch.zeros(self.compute.shape, dtype=torch.long)
        for sub in range(self.num_sublayers):
            held = -1  # differences held in the history (-1: no history)
            rolled = slope = False  # a FoCa value since the last computation; S held apart from F1
            for j in range(self.num_steps):
                action = actions[j][sub]
                if action == COMPUTE:
                    held = min(need[j][sub], held + 1)
                    slope = held >= 1 and rolled
                    updated[j, sub] = max(held, 0) + 2 * slope
                    rolled = False
                elif action == FOCA:
                    if held >= 1:
                        used[j, sub], rolled = 1 + slope, True
                elif action in (FORECAST1, FORECAST2):
                    used[j, sub] = min(_READS[action], held)
        return used, updated

    def keep(self) -> torch.Tensor:
        """(S, L) True where the output computed at this step is used later (only those are stored)."""
        return self.history_orders() >= 0

    # ------------------------------------------------------------------ summaries
    def executed_per_step(self) -> list[int]:
        return self.compute.sum(1).tolist()

    def action_counts(self) -> dict:
        return {name: int((self.actions == code).sum()) for code, name in enumerate(ACTION_NAMES)}

    def summary(self, steps: list[int] | None = None, kinds: list[str] | None = None) -> dict:
        """Executed and total sub-layer counts over `steps` (default: all).

        kinds: each sub-layer's kind (l2c.cache.layout.sublayer_kinds); adds executed_attn / total_attn over the
        attention kinds, executed_other / total_other over the rest, and executed_<kind> / total_<kind> per kind
        present. Without kinds the plan is read in our DiT / U-ViT order (attention, MLP per block): executed_attn /
        executed_mlp and their totals, or no split where the sub-layer count is odd.
        """
        c = self.compute if steps is None else self.compute[steps]
        out = {"executed": int(c.sum()), "total": int(c.numel())}
        if kinds is None:
            if self.num_sublayers % 2:
                return out
            kinds = pair_kinds(self.num_sublayers)
            groups = {"attn": [k in ATTENTION_KINDS for k in kinds], "mlp": [k == "mlp" for k in kinds]}
        else:
            if len(kinds) != self.num_sublayers:
                raise ValueError(f"{len(kinds)} kinds for a plan of {self.num_sublayers} sub-layers")
            attention = [k in ATTENTION_KINDS for k in kinds]
            groups = {"attn": attention, "other": [not a for a in attention]}
            groups.update({kind: [k == kind for k in kinds] for kind in dict.fromkeys(kinds)})
        for name, mask in groups.items():
            cols = c[:, torch.tensor(mask, dtype=torch.bool)]
            out[f"executed_{name}"], out[f"total_{name}"] = int(cols.sum()), int(cols.numel())
        return out
