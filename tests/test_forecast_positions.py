"""Forecasts positioned in the sampler's own time, and FoCa's predictor-corrector, against references written here
from the formulas; their bookkeeping (snapshots, counted arithmetic, plan checks)."""

import math

import pytest
import torch
from torch import nn

from l2c.cache import CacheEngine, CachePlan
from l2c.cache.hooks import RunPlan
from l2c.cache.layout import LAYOUTS, BlockLayout
from l2c.cache.plan import COMPUTE, FOCA, FORECAST1, FORECAST2, REUSE
from l2c.cache.positions import default_coordinate, evaluation_positions
from l2c.sampling.diffusion import DiffusionSpec
from l2c.sampling.samplers import make_sampler

C, R, F1, F2, FC = COMPUTE, REUSE, FORECAST1, FORECAST2, FOCA


class Curve(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.g, self.calls = g, 0

    def forward(self, s):
        self.calls += 1
        return self.g(s)


class Block(nn.Module):
    def __init__(self, g_attn, g_mlp):
        super().__init__()
        self.attn, self.mlp = Curve(g_attn), Curve(g_mlp)

    def forward(self, s):
        self.outputs = (self.attn(s), self.mlp(s))
        return s


class PositionNet(nn.Module):
    """forward(s) -> (L, 3): what each sub-layer returned at position s (each a function of s)."""

    def __init__(self, *curves):
        super().__init__()
        self.blocks = nn.ModuleList([Block(a, b) for a, b in zip(curves[0::2], curves[1::2])])

    def forward(self, s):
        x = torch.full((3,), float(s), dtype=torch.float64)
        for b in self.blocks:
            x = b(x)
        return torch.stack([o for b in self.blocks for o in b.outputs])


@pytest.fixture(autouse=True)
def layout():
    LAYOUTS[PositionNet] = BlockLayout(lambda m: list(m.blocks))
    yield
    del LAYOUTS[PositionNet]


def linear(s):
    return 2.0 + 3.0 * s * torch.tensor([1.0, -2.0, 0.5], dtype=s.dtype)


def quadratic(s):
    return 1.0 - 0.5 * s + 0.25 * s**2


def wavy(s):
    return torch.sin(3.0 * s) * torch.tensor([1.0, 2.0, 3.0], dtype=s.dtype) + s**3


# a shifted flow-matching grid: σ from 1 down, crowded near 1 (FluxPipeline's shift 3)
SIGMAS = [3 * x / (1 + 2 * x) for x in torch.linspace(1.0, 1 / 12, 12).tolist()]


def run(net, plan, positions, snapshot_at=None):
    """Outputs (S, L, 3) of the plan, the net evaluated at positions[j]; optionally run twice from a snapshot."""
    with CacheEngine(net, plan) as engine:
        rows, saved = [], None
        for j in range(plan.num_steps):
            if j == snapshot_at:
                saved = engine.snapshot()
            engine.begin_step(j)
            rows.append(net(positions[j]).clone())
        if saved is not None:
            engine.restore(saved)
            for j in range(snapshot_at, plan.num_steps):
                engine.begin_step(j)
                rows[j] = net(positions[j]).clone()
        return torch.stack(rows), engine.peak_stored_bytes


def test_positioned_newton_is_exact_in_the_samplers_variable():
    # computed at 0, 1, 4, 8: order 1 exact on a line in σ, order 2 on a quadratic in σ, however uneven the grid
    computed = [1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    actions = torch.tensor([[C, C] if c else [F1, F2] for c in computed])
    net = PositionNet(linear, quadratic)
    out, _ = run(net, CachePlan.from_actions(actions, positions=SIGMAS), SIGMAS)
    s = torch.tensor(SIGMAS, dtype=torch.float64)[:, None].expand(-1, 3)
    torch.testing.assert_close(out[:, 0], linear(s), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[5:, 1], quadratic(s[5:]), rtol=1e-12, atol=1e-12)
    # the same plan by index is not exact on this grid: the positions are what made it exact
    by_index, _ = run(net, CachePlan.from_actions(actions), SIGMAS)
    assert not torch.allclose(by_index[5:, 1], quadratic(s[5:]))


def test_index_positions_equal_no_positions_bit_for_bit():
    actions = torch.tensor([[C, C], [C, C], [F1, F2], [F2, FC], [C, C], [FC, F2], [F1, FC], [C, C], [F2, FC]])
    net = PositionNet(wavy, quadratic)
    grid = [0.1 * j for j in range(9)]
    a, _ = run(net, CachePlan.from_actions(actions), grid)
    b, _ = run(net, CachePlan.from_actions(actions, positions=range(9)), grid)
    assert torch.equal(a, b)


def foca_reference(g, computed, s):
    """FoCa written from the recursion: predictor from the last two values, Heun corrector anchored at the last
    computation, the local slope carried across computations; values as explicit tensors. The last value y_p is the
    last computed or FoCa value (a reuse while no slope is held is neither)."""
    out, anchors = [], []  # anchors: (s, f) of the computed evaluations
    y_p = s_p = g_p = None  # last value, its position, the slope of the last two values
    for j, sj in enumerate(s):
        f = g(torch.full((3,), sj, dtype=torch.float64))
        if computed[j]:
            if y_p is not None:
                g_p = (f - y_p) / (sj - s_p)  # from the last value (forecast or computed) to this output
            anchors.append((sj, f))
            y_p, s_p = f, sj
            out.append(f)
            continue
        if len(anchors) < 2:
            out.append(anchors[-1][1])  # no slope yet: the stored output
            continue
        (s1, f1), (s0, f0) = anchors[-2], anchors[-1]
        d0 = (f0 - f1) / (s0 - s1)
        predicted = y_p + (sj - s_p) * g_p  # BDF2 predictor (explicit: the last slope)
        slope_here = (predicted - y_p) / (sj - s_p)
        y = f0 + (sj - s0) / 2 * (d0 + slope_here)  # Heun corrector from the anchor
        g_p, y_p, s_p = (y - y_p) / (sj - s_p), y, sj
        out.append(y)
    return torch.stack(out)


def test_foca_equals_its_recursion_on_an_uneven_grid_with_snapshots():
    computed = [1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0]
    actions = torch.tensor([[C, C] if c else [FC, FC] for c in computed])
    net = PositionNet(wavy, quadratic)
    plan = CachePlan.from_actions(actions, positions=SIGMAS)
    out, _ = run(net, plan, SIGMAS)
    again, _ = run(net, plan, SIGMAS, snapshot_at=8)  # a snapshot mid-gap: the recursion state comes with it
    assert torch.equal(out, again)
    for sub, g in enumerate((wavy, quadratic)):
        torch.testing.assert_close(out[:, sub], foca_reference(g, computed, SIGMAS), rtol=1e-10, atol=1e-10)
    # exact on a line once a slope is held (evaluation 1 can only reuse), as a first-order method should be
    line, _ = run(PositionNet(linear, linear), plan, SIGMAS)
    s = torch.tensor(SIGMAS, dtype=torch.float64)[:, None].expand(-1, 3)
    torch.testing.assert_close(line[2:, 0], linear(s[2:]), rtol=1e-12, atol=1e-12)


def test_foca_differs_from_order_one_only_after_a_foca_gap():
    computed = [1, 1, 0, 0, 1, 0, 0]
    foca = torch.tensor([[C, C] if c else [FC, FC] for c in computed])
    first = torch.tensor([[C, C] if c else [F1, F1] for c in computed])
    net = PositionNet(wavy, wavy)
    a, peak_foca = run(net, CachePlan.from_actions(foca), list(range(7)))
    b, peak_first = run(net, CachePlan.from_actions(first), list(range(7)))
    torch.testing.assert_close(a[:4], b[:4], rtol=1e-12, atol=1e-12)  # no FoCa value before: Heun = the line
    assert not torch.allclose(a[5:], b[5:])  # the slope across the last gap corrects the next one
    assert peak_foca > peak_first  # one more buffer: S


def test_counted_foca_arithmetic_matches_the_terms_summed():
    computed = [1, 0, 1, 0, 0, 1, 0, 1, 1, 0]
    actions = torch.tensor([[C] if c else [FC] for c in computed])
    plan = CachePlan.from_actions(actions)
    used, updated = plan.forecast_orders()
    # computed at 0: nothing held; at 2: F1; FoCa at 3, 4 with S = F1 (one term); at 5 S is updated (1 + 2); FoCa at
    # 6 with its own S (two terms); 7 keeps the output only (8 computes next); at 8 nothing was forecast since 7
    assert used[:, 0].tolist() == [0, 0, 0, 1, 1, 0, 2, 0, 0, 1]
    assert updated[:, 0].tolist() == [0, 0, 1, 0, 0, 3, 0, 0, 1, 0]
    assert plan.forecasts and plan.action_counts()["foca"] == 5
    # the terms the engine sums are those counted
    runner, terms = RunPlan(plan), []
    x = torch.zeros(3)
    for j, c in enumerate(computed):
        if c:
            runner(j, 0, 0, lambda v, j=j: v + j * j, (x,), {})
        else:
            terms.append(len(runner.forecast_terms(j, 0, 0)[1]))
    assert terms == [n for n, c in zip(used[:, 0].tolist(), computed) if not c]


def test_bad_positions_are_refused():
    actions = torch.tensor([[C], [F1], [C]])
    with pytest.raises(ValueError, match="3 evaluations"):
        CachePlan.from_actions(actions, positions=[0.0, 1.0])
    with pytest.raises(ValueError, match="monotone"):
        CachePlan.from_actions(actions, positions=[1.0, 0.5, 0.7])
    with pytest.raises(ValueError, match="monotone"):
        CachePlan.from_actions(actions, positions=[1.0, math.nan, 0.0])
    assert CachePlan.from_actions(actions).at([3, 2, 1]).positions == (3.0, 2.0, 1.0)


@pytest.mark.parametrize("name,steps", [("ddim", 10), ("dpm-solver-2", 10), ("dpm-solver-2m", 10)])
def test_sampler_positions(name, steps):
    sampler = make_sampler(name, steps, DiffusionSpec())
    times = evaluation_positions(sampler, "time")
    lam = evaluation_positions(sampler, "log-snr")
    assert evaluation_positions(sampler, "index") is None
    assert len(times) == len(lam) == sampler.num_evaluations
    assert all(b < a for a, b in zip(times, times[1:]))  # noisiest first
    assert all(b > a for a, b in zip(lam, lam[1:]))  # log-SNR rises as noise falls
    CachePlan.full(sampler.num_evaluations, 2).at(lam)  # valid plan positions
    assert default_coordinate(sampler) == ("time" if name == "dpm-solver-2" else "index")
    with pytest.raises(ValueError, match="unknown forecast position"):
        evaluation_positions(sampler, "sigma")


def test_flow_matching_positions_are_its_sigmas():
    diffusers = pytest.importorskip("diffusers")
    from l2c.sampling.flow_matching import DiffusersFlowMatchEuler

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sampler = DiffusersFlowMatchEuler(scheduler, 8)
    times = evaluation_positions(sampler, "time")
    sigmas = scheduler.sigmas[:8].tolist()
    assert times == pytest.approx([1000 * s for s in sigmas], rel=1e-6)
    gaps = [a - b for a, b in zip(times, times[1:])]
    assert max(gaps) > 1.5 * min(gaps)  # the shifted grid: uneven in σ, which is why positions matter
    assert default_coordinate(sampler) == "index"
    with pytest.raises(ValueError, match="log-SNR"):
        evaluation_positions(sampler, "log-snr")


def test_compiled_blocks_sum_foca_terms_as_eager_does(monkeypatch):
    """CompiledCache sums forecast terms inside each block's graph: FoCa's (F1, S) pair with its host coefficients,
    positioned by log-SNR, must give the eager engine's images."""
    import dataclasses
    import functools

    import l2c.jobs.generate as generate_module
    from l2c.jobs.compile import CompiledCache
    from l2c.jobs.generate import SampleConfig, generate
    from l2c.models import create_model
    from l2c.sampling.diffusion import default_spec

    torch.manual_seed(0)
    model = create_model("DiT-tiny").eval().requires_grad_(False)
    for p in model.parameters():
        p.data.normal_(0, 0.2)  # adaLN-Zero starts the blocks at the identity: make the forecasts matter
    spec = default_spec("dit")
    config = SampleConfig(sampler="ddim", steps=8, guidance_scale=1.5, batch_size=4)
    sampler = config.make_sampler(spec)
    L = len(list(model.blocks)) * 2
    actions = torch.full((8, L), FC, dtype=torch.int8)
    actions[::3] = C
    plan = CachePlan.from_actions(actions).at(evaluation_positions(sampler, "log-snr"))
    seeds, classes = [0, 1], [1, 2]
    eager = generate(model, spec, seeds, classes, config, plan, progress=False)
    by_index = generate(model, spec, seeds, classes, config, CachePlan.from_actions(actions), progress=False)
    monkeypatch.setattr(generate_module, "CompiledCache", functools.partial(CompiledCache, backend="aot_eager"))
    torch._dynamo.reset()
    compiled = generate(model, spec, seeds, classes, dataclasses.replace(config, compile=True), plan, progress=False)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(eager, by_index, rtol=1e-6, atol=1e-6)  # the positions reached the forecasts


def test_the_schedule_search_can_choose_foca_per_sublayer():
    from l2c.cache.schedules import taylorseer
    from l2c.router.budget import action_names, schedule_plan
    from l2c.training.schedule_search import refine

    start = taylorseer(6, 4, 3, 1)
    goal = start.actions.clone()
    goal[goal[:, 2] == F1, 2] = FC  # sub-layer 2 better forecast by FoCa, the rest as they are

    def error(plan):  # distance to the goal: only the action move on sub-layer 2 reaches 0
        return float((plan.actions != goal).sum())

    found, trace = refine(start.actions, error, form="newton", rounds=2, progress=False)
    assert torch.equal(found, goal) and trace.errors[-1] == 0
    names = action_names(found)
    assert names == ["forecast1", "forecast1", "foca", "forecast1"]
    scores = torch.where(found == COMPUTE, 0.9, 0.1).double()
    assert torch.equal(schedule_plan(scores, 0.5, names, None, "newton").actions, found)  # a router file's round trip
