"""Learned schedules over every evaluation, trained along the cached sampler's own trajectory, to a MAC budget.

The paper's router only chooses sub-layers at alternate evaluations (so it can never pass 2x) and is trained on
teacher states with a cache filled by a full evaluation. Here a router holds one score per (evaluation, sub-layer)
for every evaluation after the first, and training rolls the sampler out from noise with a *soft* schedule:

    out   = β·fresh + (1 − β)·approx,   β = sigmoid(logit[j, l])
    approx = f0 + (j − j0)·F1            (forecast, order 1)   or   f0   (reuse)

where (f0, F1, j0) is the sub-layer's soft history, updated after every call as the β-weighted mix of "computed"
and "not computed":  f0 ← β·fresh + (1 − β)·f0,  F1 ← β·(fresh − f0)/(j − j0) + (1 − β)·F1,  j0 ← β·j + (1 − β)·j0.
At β ∈ {0, 1} this is exactly what the engine does with a hard plan (compute / reuse / forecast order 1), so the
stored outputs at evaluation j are those the schedule itself left there, and x_j has drifted by every earlier
approximation, as at sampling time (HarmoniCa's point; beyond the paper). By default β is that hard 0/1 in the
forward pass (score > 0.5) with the sigmoid's gradient in the backward pass (straight-through): training then
follows the trajectory of the very plan it will export, rather than of a half-computed blend.

Loss per evaluation: the squared error between the student's (guided) model output and the teacher's at the
student's own x_j — image-free: noise and labels are all it needs. Back-propagation runs through windows of W
evaluations (state detached between windows), so memory stays bounded.

The budget is met by construction, not by a λ sweep: the forward pass computes exactly the top-scored cells whose
MACs fit the target (a straight-through top-k: hard 0/1 forward, the sigmoid's gradient backward), so training
follows the trajectory of the very plan it will export, at its budget. (A Lagrangian with dual ascent on λ was
tried first: on dit-mnist its cost swung between 0.1 and 1.0 of the uncached MACs and never settled.) Export picks
the computed cells by score in the same way, forecasting arithmetic and the skip cap included (l2c.router.budget).
Scores start from TaylorSeer's uniform interval at the budget (plus a little noise), so training starts from the
strongest training-free schedule and moves cells where the trajectory loss says they matter.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ..cache.engine import CacheEngine
from ..cache.macs import MacProfile
from ..cache.plan import ACTION_NAMES, COMPUTE, CachePlan
from ..sampling.samplers import Sampler
from ..sampling.workload import ClassWorkload
from ..utils.progress import progress_bar

ACTIONS = ("reuse", "forecast1", "forecast2")  # gradient training relaxes forecast2 as forecast1
FILLS = ("evaluation", "blocks", "off")  # how a search's unspent budget is spent (ScheduleTrainConfig.fill_budget)
SEARCH_METHODS = ("ranked", "exhaustive")  # ScheduleTrainConfig.search_method


class SoftSchedule:
    """Engine behaviour: the differentiable relaxation of a compute / (reuse | forecast-1) plan (module docstring)."""

    def __init__(self, beta: torch.Tensor, forecast: bool):
        self.beta = beta  # (E, L), row 0 is 1 (evaluation 0 computes everything)
        self.forecast = forecast
        self.state: dict[tuple[int, int], list] = {}  # (slot, sub-layer) -> [f0, F1, j0]

    def detach_(self) -> None:
        """Cut the graph between training windows; values are kept."""
        for st in self.state.values():
            st[0] = st[0].detach()
            st[1] = st[1].detach() if torch.is_tensor(st[1]) else st[1]
            st[2] = st[2].detach() if torch.is_tensor(st[2]) else st[2]

    def __call__(self, step, slot, index, forward, args, kwargs):
        fresh = forward(*args, **kwargs)
        key = (slot, index)
        st = self.state.get(key)
        if st is None:  # evaluation 0: computed, the history starts here
            self.state[key] = [fresh, 0.0, float(step)]
            return fresh
        f0, slope, j0 = st
        b = self.beta[step, index]
        approx = f0 + (step - j0) * slope if self.forecast else f0
        out = b * fresh + (1 - b) * approx
        # The history is updated with β detached: the score's gradient is its direct effect on this output (and,
        # through it, on every later state), not the effect of moving the history's anchor position j0, which
        # has no hard counterpart and dominates the gradient otherwise.
        b = b.detach()
        if self.forecast:
            st[1] = b * (fresh - f0) / (step - j0) + (1 - b) * slope
            st[2] = b * step + (1 - b) * j0
        st[0] = b * fresh + (1 - b) * f0  # for reuse this is `out`; a forecast is not a new point of the history
        return out


@dataclass(frozen=True)
class ScheduleTrainConfig:
    target_macs: float = 0.4  # MAC fraction of the uncached run to meet (1 / target speedup)
    # what a non-computed cell does: "reuse", "forecast1" or "forecast2"; "auto": the forecast order with the lower
    # held-out error on the search's evenly spread start (l2c.jobs.train_schedule)
    action: str = "forecast2"
    iterations: int = 0  # gradient iterations (0: none; the search of l2c.training.schedule_search refines)
    batch_size: int = 4  # images per iteration (noise + labels only)
    window: int = 5  # evaluations per back-propagation window
    lr: float = 0.05  # Adam on the logits
    guidance_scale: float = 1.5
    init: str = "taylorseer"  # "taylorseer": +1 on the cells of the uniform interval at the budget; "flat": 0
    # forecast form of the searched and exported plan (l2c.cache.plan): Newton's is 1 dB closer to the uncached
    # images than TaylorSeer's own at equal MACs on dit-mnist DDIM-20, searched or not (docs/benchmarks.md)
    form: str = "newton"
    search_rounds: int = 2  # rounds of budget-neutral moves measured on held-out noise (0: none)
    search_images: int = 64  # held-out noise seeds a move is measured on
    check_images: int = 64  # other held-out seeds a kept move must also improve (0: no check)
    # after the search, spend what it left of the budget (schedule_search): "evaluation" on sub-layers of the one
    # evaluation that helps most (fill_within_evaluation), "blocks" block by block (fill_budget), "off"
    fill_budget: str = "evaluation"
    search_snapshots: int = 10  # snapshots per run a search candidate resumes from (0: none; schedule_search)
    # "ranked": moves screened on `screen_images` of the held-out images and tried best first, starts and fills
    # ranked in one pass (l2c.training.ranked_search); "exhaustive": every move measured on every held-out image,
    # one pass per unit a start or fill adds (l2c.training.schedule_search)
    search_method: str = "ranked"
    screen_images: int = 16
    search_minutes: float | None = None  # stop the search after this long with the best plan so far (None: never)
    # what the search's error compares: "images", the samples clipped to the saved images' range (pixel models; a
    # latent model's samples are compared as they are), or "samples", unclipped
    error_on: str = "images"
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.target_macs < 1.0:
            raise ValueError(f"the target MAC fraction must be in (0, 1), got {self.target_macs}")
        if self.action not in (*ACTIONS, "auto"):
            raise ValueError(f"action must be one of {ACTIONS} or 'auto', got {self.action!r}")
        if self.action == "auto" and (self.iterations or not self.search_rounds):
            raise ValueError(
                "action 'auto' measures the forecast orders on held-out seeds before a search: it needs "
                "--search-rounds >= 1 and no --iterations"
            )
        if self.error_on not in ("images", "samples"):
            raise ValueError(f"error_on must be 'images' or 'samples', got {self.error_on!r}")
        if self.init not in ("taylorseer", "flat"):
            raise ValueError(f"init must be 'taylorseer' or 'flat', got {self.init!r}")
        if self.search_method not in SEARCH_METHODS:
            raise ValueError(f"search_method must be one of {SEARCH_METHODS}, got {self.search_method!r}")
        if self.search_minutes is not None and not (math.isfinite(self.search_minutes) and self.search_minutes > 0):
            raise ValueError(f"search_minutes must be a finite number > 0, got {self.search_minutes}")
        if self.fill_budget not in FILLS:
            raise ValueError(f"fill_budget must be one of {FILLS}, got {self.fill_budget!r}")
        if self.fill_budget == "blocks" and not self.search_rounds:
            raise ValueError("fill_budget needs a search (search_rounds > 0): without one the export fills the budget")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        for name in ("check_images", "search_snapshots"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "window", "search_images", "screen_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")


def soft_cost(beta: torch.Tensor, macs: MacProfile) -> torch.Tensor:
    """MAC fraction of a (soft or hard) schedule against the uncached run (paper convention; forecast arithmetic is
    left out here — it is counted exactly at export)."""
    per = torch.tensor(macs.sublayer_linear, dtype=beta.dtype, device=beta.device)
    evaluations = beta.shape[0]
    full = evaluations * macs.full()
    return (evaluations * macs.fixed + (beta * per).sum()) / full


def budget_mask(scores: torch.Tensor, macs: MacProfile, target: float) -> torch.Tensor:
    """0/1 (E, L): evaluation 0, then the best-scored cells while their sub-layer MACs fit `target`."""
    E, L = scores.shape
    per = torch.tensor(macs.sublayer_linear, dtype=torch.float64)
    spare = target * E * macs.full() - E * macs.fixed - float(per.sum())  # after evaluation 0
    order = scores[1:].detach().flatten().argsort(descending=True)
    cost = per.repeat(E - 1)[order].cumsum(0)
    mask = torch.zeros((E - 1) * L, dtype=scores.dtype, device=scores.device)
    mask[order[cost <= spare]] = 1
    return torch.cat([torch.ones_like(scores[:1]), mask.view(E - 1, L)])


def uniform_interval(E: int, macs: MacProfile, config: ScheduleTrainConfig) -> int:
    """The shortest interval N whose plan (every sub-layer computed at every N-th evaluation, config.action elsewhere)
    fits the budget at its exact cost, forecast arithmetic included. Without that arithmetic U-ViT-mnist's N = 5 at
    NFE 20 seemed to fit 0.25 (it costs 0.257), the export cut it down at random, and the search ended 5 dB below
    N = 5 (docs/benchmarks.md)."""
    for interval in range(1, E):
        if rows_cost(E, list(range(0, E, interval)), macs, config) <= config.target_macs:
            return interval
    return E


def initial_logits(E: int, L: int, config: ScheduleTrainConfig, macs: MacProfile) -> torch.Tensor:
    """+1 on TaylorSeer's cells at the budget ("taylorseer") or 0 ("flat"), with a little jitter to break ties."""
    jitter = 0.1 * torch.randn((E, L), generator=torch.Generator().manual_seed(config.seed))
    if config.init == "flat":
        return jitter
    # The budget must take every cell of the start: an interval that does not fit (a 0.40 budget once started from
    # N = 2, which costs 0.54 on U-ViT-mnist) is cut down by jitter, a start the search cannot repair.
    prior = -torch.ones(E, L)
    prior[start_evaluations(E, macs, config)] = 1.0
    return prior + jitter


def start_evaluations(E: int, macs: MacProfile, config: ScheduleTrainConfig) -> list[int]:
    """The fully computed evaluations the search starts from: TaylorSeer's every N-th when its interval fills the
    budget, else the most evaluations that fit, evenly spread. A budget between two intervals (1.5x lies between
    N = 1 and N = 2) would otherwise start from N = 2 with the rest of the budget on random single cells. The fit is
    the exact cost, forecast arithmetic included, so the export keeps every one of them."""
    uniform = list(range(0, E, uniform_interval(E, macs, config)))
    for count in range(E, len(uniform), -1):
        rows = [i * E // count for i in range(count)]
        if rows_cost(E, rows, macs, config) <= config.target_macs:
            return rows
    return uniform


def warmup_rows(E: int, count: int, warm: int) -> list[int] | None:
    """`count` fully computed evaluations: the first `warm` back to back, the rest spread evenly after them with the
    last gap as long as the others (None where fewer than two are left to spread). diffusers' TaylorSeer computes
    its first three steps before it forecasts (disable_cache_before_step); the search's moves shift one evaluation at
    a time and would not reach such a start from an even spread, so it is measured as a start of its own. It is not
    always better: on flux-mnist at 2x and 3x the even spread of as many evaluations had the lower held-out error
    (docs/learned-schedules.md)."""
    rest = count - warm
    if warm < 1 or rest < 2 or count > E:
        return None
    spacing = (E - warm + 1) / (rest + 1)
    rows = list(range(warm)) + [warm - 1 + int(spacing * (i + 1)) for i in range(rest)]
    return rows if len(set(rows)) == count and rows[-1] < E else None


def rows_actions(E: int, L: int, rows, action: str) -> torch.Tensor:
    """The (E, L) action table that computes whole evaluations `rows` and does `action` elsewhere."""
    actions = torch.full((E, L), ACTION_NAMES.index(action), dtype=torch.long)
    actions[rows] = COMPUTE
    return actions


def rows_cost(E: int, rows: list[int], macs: MacProfile, config: ScheduleTrainConfig) -> float:
    """Exact MAC fraction of the plan that computes whole evaluations `rows` and does config.action elsewhere."""
    actions = rows_actions(E, len(macs.sublayer_linear), rows, config.action)
    return macs.fraction(CachePlan.from_actions(actions, form=config.form))


def interval_just_over(E: int, macs: MacProfile, config: ScheduleTrainConfig) -> tuple[int, float] | None:
    """(N, its MAC fraction) when a TaylorSeer interval N shorter than the start's costs at most 5 % more
    than the budget: on dit-mnist DDIM-20 a 0.50 budget started from 9 evenly spread evaluations lost 5 dB to N = 2
    at 0.51 (docs/benchmarks.md), which the user should hear about before a long search, and the search can start
    from that interval trimmed to the budget. The shortest such N: two intervals can compute as many evaluations
    (N = 5 and 6 at 20 evaluations: 0, 5, 10, 15 and 0, 6, 12, 18)."""
    for shorter in range(1, uniform_interval(E, macs, config)):
        cost = rows_cost(E, list(range(0, E, shorter)), macs, config)
        if cost <= 1.05 * config.target_macs:
            return shorter, cost
    return None


def interval_well_under(E: int, macs: MacProfile, config: ScheduleTrainConfig) -> tuple[int, float] | None:
    """(N, its MAC fraction) when the TaylorSeer interval that fits the budget costs less than 95 % of it (N > 1):
    the budget lies between two intervals. On dit-mnist DDIM-50 the schedules searched at such budgets (0.40 and
    0.333, between N = 2 and 3) lost to N = 3 alone, which is cheaper, faster and better (docs/benchmarks.md, "The
    five budgets on dit-mnist DDIM-50"): the start spreads the extra evaluations unevenly, and the search's moves
    cannot make the gaps even again. On uvit-mnist NFE 20 at 0.667 the searched schedule beat N = 2. With a search,
    that interval, grown by whole evaluations where the held-out error falls (schedule_search.grow_to_budget), is
    measured as a second start."""
    interval = uniform_interval(E, macs, config)
    if interval < 2 or interval >= E:
        return None
    cost = rows_cost(E, list(range(0, E, interval)), macs, config)
    return (interval, cost) if cost < 0.95 * config.target_macs else None


def train_schedule(
    model,
    sampler: Sampler,
    macs: MacProfile,
    config: ScheduleTrainConfig,
    num_classes: int,
    progress: bool = True,
) -> tuple[torch.Tensor, dict]:
    """Logits (E, L) of a learned schedule and the training history (loss per iteration, wall time)."""
    model.eval().requires_grad_(False)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    E, L = sampler.num_evaluations, len(macs.sublayer_linear)
    logits = initial_logits(E, L, config, macs).to(device).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=config.lr)
    history = {"iteration": [], "loss": [], "cost": []}
    engine = CacheEngine(model)
    t0 = time.time()
    try:
        bar = progress_bar(range(config.iterations), desc="train-schedule", disable=not progress)
        for it in bar:
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + it)
            shape = (config.batch_size, model.in_channels, model.input_size, model.input_size)
            z = torch.randn(shape, generator=gen).to(device, dtype)
            y = torch.randint(num_classes, (config.batch_size,), generator=gen).to(device)
            loss, cost = _rollout(model, engine, sampler, logits, opt, macs, config, z, y)
            for key, value in (("iteration", it + 1), ("loss", loss), ("cost", cost)):
                history[key].append(value)
            bar.set_postfix(loss=f"{loss:.3g}", macs=f"{cost:.3f}")
    finally:
        engine.detach()
    history["wall_s"] = time.time() - t0
    history["config"] = asdict(config)
    return logits.detach().cpu(), history


def _rollout(model, engine, sampler, logits, opt, macs, config, z, y):
    """One sampling run from noise z under the schedule, optimising the logits every `window` evaluations.
    Returns (mean per-evaluation loss, MAC fraction of the schedule it ran)."""
    student, copies = ClassWorkload(model, sampler, config.guidance_scale).denoiser(y)  # as sampling runs it
    x = torch.cat([z] * copies)
    losses, window_loss, done, history = [], 0.0, 0, {}

    def beta_now():
        scores = torch.sigmoid(logits)
        hard = budget_mask(scores, macs, config.target_macs)
        return hard + scores - scores.detach()  # the top-k plan forward, the sigmoid's gradient backward

    soft = SoftSchedule(beta_now(), config.action != "reuse")
    cost = float(soft_cost(soft.beta.detach().double(), macs))

    def denoise(x_j, t, j):
        nonlocal window_loss, done
        if j:
            engine.begin_step(j)  # step 0 was begun (and the store reset) before the loop
        with torch.no_grad(), engine.bypassed():
            teacher = student(x_j, t, j)
        with engine.behaving(soft):
            out = student(x_j, t, j)
        step_loss = (out - teacher).float().square().mean()
        window_loss = window_loss + step_loss
        losses.append(float(step_loss.detach()))
        done += 1
        return out

    engine.begin_step(0)
    for i in range(sampler.num_steps):
        x = sampler.step(denoise, x, i, history)
        if done >= config.window or i == sampler.num_steps - 1:
            opt.zero_grad(set_to_none=True)
            (window_loss / sampler.num_evaluations).backward()
            opt.step()
            window_loss, done = 0.0, 0
            x = x.detach()
            _detach_history(history)
            soft.detach_()
            soft.beta = beta_now()  # the updated scores from here on
    loss = sum(losses) / len(losses)
    if not math.isfinite(loss):
        raise FloatingPointError(f"schedule loss is {loss}; lower --lr (now {config.lr})")
    return loss, cost


def _detach_history(history: dict) -> None:
    for key, value in history.items():
        if torch.is_tensor(value):
            history[key] = value.detach()
        elif isinstance(value, list):
            history[key] = [v.detach() if torch.is_tensor(v) else v for v in value]
