"""The cache engine under general plans: exact forecasts on known sequences, TaylorSeer's formula, call counts,
stored memory, other hooks on the same modules, and sampling with forecasts against a reference written here."""

import math

import pytest
import torch
from torch import nn

from l2c.cache import CacheEngine, CachePlan
from l2c.cache.layout import LAYOUTS, BlockLayout, sublayers
from l2c.cache.plan import COMPUTE, DROP, FORECAST1, FORECAST2, REUSE
from l2c.cache.schedules import fora, taylorseer
from l2c.models import create_model

try:
    from l2c.pipeline import SampleConfig, generate
except ImportError:
    from l2c.jobs.generate import SampleConfig, generate
try:
    from l2c.sampling.diffusion import DiffusionSpec
except ImportError:
    from l2c.diffusion import DiffusionSpec

C, R, F1, F2, D = COMPUTE, REUSE, FORECAST1, FORECAST2, DROP
ORDER = {REUSE: 0, FORECAST1: 1, FORECAST2: 2}


# ------------------------------------------------------------------ a dummy whose sub-layers are functions of j
class Curve(nn.Module):
    """Returns g(j) for an input holding the evaluation index j; counts its calls."""

    def __init__(self, g):
        super().__init__()
        self.g, self.calls = g, 0

    def forward(self, x):
        self.calls += 1
        return self.g(x)


class CurveBlock(nn.Module):
    def __init__(self, g_attn, g_mlp):
        super().__init__()
        self.attn, self.mlp = Curve(g_attn), Curve(g_mlp)

    def forward(self, x):
        self.outputs = (self.attn(x), self.mlp(x))
        return x


class CurveNet(nn.Module):
    """forward(j) -> (L, 3): what each sub-layer returned (computed, reused, forecast or dropped) at evaluation j."""

    def __init__(self, *curves):
        super().__init__()
        self.blocks = nn.ModuleList([CurveBlock(a, b) for a, b in zip(curves[0::2], curves[1::2])])

    def forward(self, j):
        x = torch.full((3,), float(j), dtype=torch.float64)
        for b in self.blocks:
            x = b(x)
        return torch.stack([o for b in self.blocks for o in b.outputs])


@pytest.fixture
def curve_layout():
    LAYOUTS[CurveNet] = BlockLayout(lambda m: list(m.blocks))
    yield
    del LAYOUTS[CurveNet]


def linear(x):
    return 2.0 + 3.0 * x * torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype)


def quadratic(x):
    return 1.0 - 0.5 * x + 0.25 * x**2


def wavy(x):
    return torch.sin(0.3 * x) * torch.tensor([1.0, 2.0, 3.0], dtype=x.dtype) + 0.01 * x**3


def run(net, plan):
    with CacheEngine(net, plan) as engine:
        rows = []
        for j in range(plan.num_steps):
            engine.begin_step(j)
            rows.append(net(j))
        return torch.stack(rows), engine.peak_stored_bytes, engine.stored_bytes  # (S, L, 3)


def test_newton_forecasts_are_exact_on_polynomials_with_uneven_gaps(curve_layout):
    # computed at 0, 1, 4, 9; sub-layer 0 (linear) forecast at order 1, sub-layer 1 (quadratic) at order 2
    computed = [1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    actions = torch.tensor([[C, C] if c else [F1, F2] for c in computed])
    net = CurveNet(linear, quadratic)
    out, _, _ = run(net, CachePlan.from_actions(actions, form="newton"))
    j = torch.arange(len(computed), dtype=torch.float64)
    torch.testing.assert_close(out[:, 0], linear(j[:, None].expand(-1, 3)), rtol=1e-12, atol=1e-12)
    # order 2 needs three points: exact from evaluation 5 on; at 2, 3 it falls back to the line through 0 and 1
    torch.testing.assert_close(out[5:, 1], quadratic(j[5:, None].expand(-1, 3)), rtol=1e-12, atol=1e-12)
    line = quadratic(torch.tensor(1.0)) + (quadratic(torch.tensor(1.0)) - quadratic(torch.tensor(0.0))) * (j[2:4] - 1)
    torch.testing.assert_close(out[2:4, 1], line[:, None].expand(-1, 3).double())
    # forecasts never enter the sub-layer's forward
    assert [m.calls for m in sublayers(net)] == [4, 4]


def transcribed_forecast(points, j, order, form):
    """Reference forecast from the list [(j_i, f_i)] of computed outputs, written from the published formulas."""
    p = min(order, len(points) - 1)
    j0, last = points[-1][0], points[-1 - p :]
    if form == "taylorseer":  # f0 + Σ_i Δ^i f0 · k^i / (i! N^i), backward differences, fixed interval N
        n = j0 - points[-2][0] if p else 1
        f = [fi for _, fi in last][::-1]  # f0, f1, f2
        delta = [f[0], f[0] - f[1] if p >= 1 else None, f[0] - 2 * f[1] + f[2] if p == 2 else None]
        return sum(delta[i] * (j - j0) ** i / (math.factorial(i) * n**i) for i in range(p + 1))
    # newton: the polynomial of degree p through the last p + 1 points (Lagrange form), evaluated at j
    total = 0
    for i, (ji, fi) in enumerate(last):
        weight = math.prod((j - jm) / (ji - jm) for m, (jm, _) in enumerate(last) if m != i)
        total = total + fi * weight
    return total


@pytest.mark.parametrize("form", ["taylorseer", "newton"])
@pytest.mark.parametrize("interval,order", [(3, 1), (3, 2), (4, 2)])
def test_taylorseer_plan_equals_its_formula(curve_layout, form, interval, order):
    plan = taylorseer(13, 2, interval, order, form=form)
    net = CurveNet(wavy, quadratic)
    out, _, _ = run(net, plan)
    for sub, g in enumerate((wavy, quadratic)):
        points = []
        for j in range(13):
            f = g(torch.full((3,), float(j), dtype=torch.float64))
            if j % interval == 0:
                points.append((j, f))
                expected = f
            else:
                expected = transcribed_forecast(points, j, order, form)
            torch.testing.assert_close(out[j, sub], expected, rtol=1e-12, atol=1e-12)
    assert [m.calls for m in sublayers(net)] == [len(range(0, 13, interval))] * 2


def test_forms_differ_only_at_order_two(curve_layout):
    a = run(CurveNet(wavy, wavy), taylorseer(10, 2, 3, 1, form="taylorseer"))[0]
    b = run(CurveNet(wavy, wavy), taylorseer(10, 2, 3, 1, form="newton"))[0]
    assert torch.equal(a, b)
    a = run(CurveNet(wavy, wavy), taylorseer(10, 2, 3, 2, form="taylorseer"))[0]
    b = run(CurveNet(wavy, wavy), taylorseer(10, 2, 3, 2, form="newton"))[0]
    assert torch.equal(a[:7], b[:7]) and not torch.allclose(a[7:], b[7:])  # order 2 starts after 3 points (j=6)


def test_reuse_drop_and_calls(curve_layout):
    actions = torch.tensor([[C, C], [R, D], [R, C], [C, D]])
    net = CurveNet(linear, quadratic)
    out, _, _ = run(net, CachePlan.from_actions(actions))
    x = torch.full((3,), 0.0, dtype=torch.float64)
    assert torch.equal(out[1, 0], linear(x)) and torch.equal(out[2, 0], linear(x))  # reused, however long ago
    assert torch.equal(out[1, 1], torch.zeros(3, dtype=torch.float64))  # dropped: contributes zero
    assert torch.equal(out[3, 1], torch.zeros(3, dtype=torch.float64))
    assert [m.calls for m in sublayers(net)] == [2, 2]


def test_custom_behaviour_inside_a_block_only(curve_layout):
    net = CurveNet(linear, quadratic)
    plain = net(3)

    def doubled(step, slot, index, forward, args, kwargs):
        return 2 * forward(*args, **kwargs)

    with CacheEngine(net) as engine:
        with engine.behaving(doubled):
            assert torch.equal(net(3), 2 * plain)
        assert torch.equal(net(3), plain)  # back to the pass-through


def test_stored_memory_report(curve_layout):
    # 4 sub-layers, (3,) float64 outputs = 24 bytes. TaylorSeer(2, 2) over 7 evaluations computes at 0, 2, 4, 6: the
    # history holds f0 after 0, f0 + F1 after 2, f0 + F1 + F2 after 4, and is freed after its last read at 5.
    _, peak, left = run(CurveNet(wavy, wavy, wavy, wavy), taylorseer(7, 4, 2, 2))
    assert peak == 4 * 3 * 24 and left == 0
    with torch.no_grad():  # sampling: forecasts are written into one more buffer per history, not allocated
        out, peak, left = run(CurveNet(wavy, wavy, wavy, wavy), taylorseer(7, 4, 2, 2))
    assert peak == 4 * 4 * 24 and left == 0
    torch.testing.assert_close(out, run(CurveNet(wavy, wavy, wavy, wavy), taylorseer(7, 4, 2, 2))[0])
    _, peak, left = run(CurveNet(wavy, wavy, wavy, wavy), fora(7, 4, 3))  # reuse keeps the output only
    assert peak == 4 * 24 and left == 0
    _, peak, _ = run(CurveNet(wavy, wavy, wavy, wavy), CachePlan.full(7, 4))  # nothing is ever read back
    assert peak == 0


def test_steps_out_of_plan_and_wrong_plans_are_refused(curve_layout):
    net = CurveNet(wavy, wavy)
    with pytest.raises(ValueError, match="sub-layers"):
        CacheEngine(net, CachePlan.full(3, 4))
    plan = CachePlan.full(3, 2)
    plan.compute[1, 1] = False  # edited after construction: validated again before attaching
    with pytest.raises(ValueError, match="exactly the cells"):
        CacheEngine(net, plan)
    assert not any("forward" in m.__dict__ for m in sublayers(net))
    with CacheEngine(net, CachePlan.full(3, 2)) as engine:
        with pytest.raises(ValueError, match="covers 3 steps"):
            engine.begin_step(3)
    with pytest.raises(ValueError, match="is gone"):
        CacheEngine(net, mode="soft")


# ------------------------------------------------------------------ other hooks on the same modules
def random_model(preset, dtype=torch.float32):
    model = create_model(preset).to(dtype).eval().requires_grad_(False)
    torch.manual_seed(1)
    for p in model.parameters():
        p.data.normal_(0, 0.2)  # adaLN-Zero initialises the blocks to the identity
    return model


def hook_state(model):
    return [
        (name, sorted(m.__dict__), list(m._forward_hooks), list(m._forward_pre_hooks))
        for name, m in model.named_modules()
    ]


@pytest.mark.parametrize("engine_first", [True, False])
def test_user_hooks_survive_attach_and_detach_in_any_order(engine_first):
    model = random_model("DiT-tiny")
    attn = model.blocks[0].attn
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 20]), torch.tensor([1, 2])
    fired = []
    handles = [
        attn.register_forward_hook(lambda m, i, o: fired.append("post")),
        attn.register_forward_pre_hook(lambda m, i: fired.append("pre")),
        model.register_forward_pre_hook(lambda m, i: fired.append("root")),
    ]
    before, plain = hook_state(model), model(x, t, y)
    engine = CacheEngine(model, fora(2, 4, 2))
    late = attn.register_forward_hook(lambda m, i, o: fired.append("late"))
    fired.clear()
    engine.begin_step(0)
    model(x, t, y)
    engine.begin_step(1)
    model(x, t + 5, y)  # attn reused: its hooks still run around the skipped forward
    assert fired == ["root", "pre", "post", "late"] * 2
    if engine_first:
        engine.detach()
        late.remove()
    else:
        late.remove()
        engine.detach()
    assert hook_state(model) == before
    fired.clear()
    assert torch.equal(model(x, t, y), plain) and fired == ["root", "pre", "post"]
    for h in handles:
        h.remove()
    assert not attn._forward_hooks and not attn._forward_pre_hooks and not model._forward_pre_hooks


def test_second_engine_is_refused_and_foreign_wrappers_are_left_alone():
    model = random_model("DiT-tiny")
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 20]), torch.tensor([1, 2])
    plain = model(x, t, y)
    engine = CacheEngine(model, fora(2, 4, 2))
    with pytest.raises(RuntimeError, match="already attached"):
        CacheEngine(model)
    mlp = model.blocks[1].mlp
    inner = mlp.forward

    def theirs(*args):  # someone wraps our dispatcher after we attached
        return inner(*args)

    mlp.forward = theirs
    engine.detach()
    engine.detach()  # idempotent
    assert mlp.__dict__["forward"] is theirs and "forward" not in model.blocks[0].attn.__dict__
    assert torch.equal(model(x, t, y), plain)  # our dispatcher, still inside theirs, only passes through
    del mlp.forward
    with CacheEngine(model) as again:  # a new engine attaches after the first one detached
        assert again.attached


# ------------------------------------------------------------------ sampling with general plans
def sample_config(sampler, steps, weight):
    return SampleConfig(sampler=sampler, steps=steps, guidance_scale=weight, batch_size=4)


CASES = [("DiT-tiny", "ddim", 1.5, 1), ("U-ViT-tiny", "dpm-solver-2", 1.4, 2)]  # model calls per evaluation


def spec_for(preset):
    return DiffusionSpec("linear", 0 if preset.startswith("DiT") else 1)


@pytest.mark.parametrize("preset,sampler,weight,calls", CASES)
def test_general_compute_and_reuse_plans_equal_bool_plans(preset, sampler, weight, calls):
    model = random_model(preset)
    L, S = len(sublayers(model)), 8
    sc, spec = sample_config(sampler, S, weight), spec_for(preset)
    plain = generate(model, spec, [0, 1, 2], [1, 2, 3], sc, progress=False)
    full = CachePlan.from_actions(torch.zeros(S, L, dtype=torch.int8))
    assert torch.equal(generate(model, spec, [0, 1, 2], [1, 2, 3], sc, plan=full, progress=False), plain)
    compute = torch.rand(S, L, generator=torch.Generator().manual_seed(4)) > 0.4
    compute[0] = True
    bool_plan = CachePlan(compute)
    general = CachePlan.from_actions(torch.where(compute, C, R))
    a = generate(model, spec, [0, 1, 2], [1, 2, 3], sc, plan=bool_plan, progress=False)
    b = generate(model, spec, [0, 1, 2], [1, 2, 3], sc, plan=general, progress=False)
    assert torch.equal(a, b) and not torch.equal(a, plain)


def reference_sampling(model, actions, form, calls_per_evaluation, sample):
    """Runs `sample()` uncached, with every sub-layer's forward replaced here by a plain-Python plan executor."""
    histories, count = {}, [-1]
    modules = sublayers(model)
    handle = model.register_forward_pre_hook(lambda m, a: count.__setitem__(0, count[0] + 1))

    def patched(index, original):
        def forward(*args):
            j, slot = divmod(count[0], calls_per_evaluation)
            points = histories.setdefault((slot, index), [])
            action = actions[j][index]
            if action == C:
                points.append((j, original(*args)))
                return points[-1][1]
            if action == D:
                return torch.zeros_like(args[0])
            return transcribed_forecast(points, j, ORDER[action], form)

        return forward

    for index, m in enumerate(modules):
        m.forward = patched(index, m.forward)
    try:
        return sample()
    finally:
        handle.remove()
        for m in modules:
            del m.forward


@pytest.mark.parametrize("preset,sampler,weight,calls", CASES)
@pytest.mark.parametrize("form", ["taylorseer", "newton"])
def test_sampling_with_forecasts_equals_reference(preset, sampler, weight, calls, form):
    model = random_model(preset, torch.float64)
    L, S = len(sublayers(model)), 10
    sc, spec = sample_config(sampler, S, weight), spec_for(preset)
    mixed = torch.randint(1, 5, (S, L), generator=torch.Generator().manual_seed(5), dtype=torch.int8)
    mixed[::3] = C  # computed every third evaluation, a random action of the four others in between
    plans = [taylorseer(S, L, 3, 2, form=form), CachePlan.from_actions(mixed, form=form, max_skip=2)]
    for plan in plans:
        ours = generate(model, spec, [0, 1, 2], [1, 2, 3], sc, plan=plan, progress=False)
        ref = reference_sampling(
            model,
            plan.actions.tolist(),
            form,
            calls,
            lambda: generate(model, spec, [0, 1, 2], [1, 2, 3], sc, progress=False),
        )
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
