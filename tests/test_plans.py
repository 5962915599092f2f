"""General cache plans: actions, caps, what the engine keeps, the method builders, and their MAC counts."""

import pytest
import torch

from l2c.cache import cache_steps_for
from l2c.cache.baselines import fora_plan
from l2c.cache.macs import profile_macs
from l2c.cache.plan import COMPUTE, DROP, FORECAST1, FORECAST2, REUSE, CachePlan
from l2c.cache.schedules import fora, l2c_alternation, taylorseer
from l2c.router import Router

C, R, F1, F2, D = COMPUTE, REUSE, FORECAST1, FORECAST2, DROP


def test_bool_plan_is_compute_or_reuse():
    plan = CachePlan(torch.tensor([[1, 1], [0, 1], [1, 0]], dtype=torch.bool))
    assert plan.actions.dtype == torch.int8
    assert plan.actions.tolist() == [[C, C], [R, C], [C, R]]
    assert not plan.forecasts
    general = CachePlan.from_actions(plan.actions)
    assert torch.equal(general.compute, plan.compute) and torch.equal(general.actions, plan.actions)


def test_action_validation():
    with pytest.raises(ValueError, match="step 0"):
        CachePlan.from_actions(torch.tensor([[C, F1], [C, C]]))
    with pytest.raises(ValueError, match="unknown action"):
        CachePlan.from_actions(torch.tensor([[C, C], [C, 7]]))
    with pytest.raises(ValueError, match="exactly the cells"):
        CachePlan(torch.tensor([[1, 1], [1, 1]], dtype=torch.bool), torch.tensor([[C, C], [R, C]]))
    with pytest.raises(ValueError, match="forecast form"):
        CachePlan.from_actions(torch.tensor([[C, C], [F1, C]]), form="spline")


def test_cap_on_consecutive_skips():
    actions = torch.tensor([[C, C], [R, F1], [F2, F1], [C, F1], [R, C]])
    plan = CachePlan.from_actions(actions, max_skip=3)
    assert plan.skip_runs()[:, 1].tolist() == [0, 1, 2, 3, 0]
    with pytest.raises(ValueError, match=r"sub-layer 1 is not computed for 3 evaluations in a row .* max_skip=2"):
        CachePlan.from_actions(actions, max_skip=2)
    with pytest.raises(ValueError, match="max_skip must be >= 0"):
        CachePlan.from_actions(actions, max_skip=-1)
    assert fora(10, 2, 4).max_skip == 3 and taylorseer(10, 2, 3, 2).max_skip == 2


def test_history_orders_propagate_back():
    # one sub-layer: computed at 0, 2, 4, 6; order-2 forecasts only after the computation at 4
    plan = CachePlan.from_actions(torch.tensor([[C, C], [R, C], [C, C], [R, C], [C, C], [F2, C], [C, C]]))
    # at 4 the forecast needs F2, so 2 needs F1 and 0 its output; nothing reads what 6 computes
    assert plan.history_orders()[:, 0].tolist() == [0, -1, 1, -1, 2, -1, -1]
    # step 0 keeps its output for the reuse at 1 and for the F1 at 2 (two points); the other column keeps nothing
    assert plan.keep()[:, 0].tolist() == [True, False, True, False, True, False, False]
    assert not plan.keep()[:, 1].any()
    used, updated = plan.forecast_orders()
    assert updated[:, 0].tolist() == [0, 0, 1, 0, 2, 0, 0] and used[5, 0] == 2


def test_forecasts_fall_back_until_enough_points():
    plan = taylorseer(7, 2, 2, 2)  # computed 0, 2, 4, 6
    used, updated = plan.forecast_orders()
    assert used[:, 0].tolist() == [0, 0, 0, 1, 0, 2, 0]  # reuse after one point, order 1 after two, 2 after three
    assert updated[:, 0].tolist() == [0, 0, 1, 0, 2, 0, 0]  # nothing forecasts after 6: no update there


def test_fora_builder_equals_baseline():
    for steps, interval in ((20, 2), (50, 3), (7, 4), (5, 1)):
        new, old = fora(steps, 12, interval), fora_plan(steps, 12, interval)
        assert torch.equal(new.compute, old.compute) and torch.equal(new.actions, old.actions)
    with pytest.raises(ValueError, match="interval"):
        fora(10, 4, 0)


def test_l2c_builder_equals_router_plan():
    router = Router(20, 8, cache_steps_for("alternate", 20), generator=torch.Generator().manual_seed(0))
    for theta in (0.1, 0.5, 0.9):
        new, old = l2c_alternation(router.logits, router.cache_steps, theta), router.to_plan(theta)
        assert torch.equal(new.compute, old.compute) and torch.equal(new.actions, old.actions)
    dropped = l2c_alternation(router.logits, router.cache_steps, 0.5, drop=True)
    assert torch.equal(dropped.compute, router.to_plan(0.5).compute)
    assert set(dropped.actions[~dropped.compute].tolist()) == {D}


def test_taylorseer_builder():
    plan = taylorseer(7, 4, 3, 1)
    assert plan.actions[:, 0].tolist() == [C, F1, F1, C, F1, F1, C] and plan.form == "taylorseer"
    assert taylorseer(7, 4, 3, 2).actions[1, 0] == F2
    assert taylorseer(7, 4, 3, 2, form="newton").form == "newton"
    with pytest.raises(ValueError, match="order"):
        taylorseer(7, 4, 3, 3)


def test_macs_count_forecast_arithmetic():
    macs = profile_macs("DiT-tiny")
    L = len(macs.sublayer_linear)
    assert macs.sublayer_outputs == [4 * 32.0] * L  # 4 tokens x 32 channels per sub-layer call
    reuse = fora(6, L, 3)
    # bool rows keep working, and a plan without forecasts costs exactly its rows
    assert macs.plan_total(reuse) == sum(macs.per_evaluation(r) for r in reuse.compute.tolist())
    plan = taylorseer(6, L, 2, 2)  # computed 0, 2, 4; forecasts at 1 (order 0), 3 (1), 5 (2)
    # updates: at 2 one difference, at 4 two; forecasts: 1 + 2 multiply-adds per element -> 6 per element per sub-layer
    assert macs.forecast_macs(plan) == 6 * 4 * 32 * L
    assert macs.plan_total(plan, "analytic") == (
        sum(macs.per_evaluation(r, "analytic") for r in plan.compute.tolist()) + 6 * 4 * 32 * L
    )


@pytest.mark.parametrize("preset", ["DiT-tiny", "U-ViT-tiny"])
def test_pre_norms_of_skipped_sublayers_are_not_computed(preset, monkeypatch):
    """A sub-layer the plan does not compute does not read its input, so its pre-norm is skipped too: same outputs
    bit for bit, LayerNorm calls only for the computed sub-layers (plus the model's own final norm), and the model is
    restored exactly after detach()."""
    import l2c.cache.engine as engine_module
    from l2c.cache import CacheEngine
    from l2c.models import create_model

    torch.manual_seed(0)
    model = create_model(preset).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pos_embed" not in name:
                p.normal_(0, 0.2)
    L, S = len(engine_module.sublayers(model)), 5
    actions = torch.full((S, L), F2, dtype=torch.int8)
    actions[0], actions[3, ::2], actions[4, 1] = C, C, C
    plan = CachePlan.from_actions(actions)
    calls = []
    layer_norm = torch.nn.LayerNorm.forward
    monkeypatch.setattr(torch.nn.LayerNorm, "forward", lambda self, x: (calls.append(self), layer_norm(self, x))[1])
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])

    def run():
        calls.clear()
        outs = []
        with torch.no_grad(), CacheEngine(model, plan) as engine:
            for j in range(S):
                engine.begin_step(j)
                outs.append(model(x, torch.full((2,), 900.0 - 100 * j), y))
        return torch.stack(outs), len(calls)

    skipping, with_skips = run()
    monkeypatch.setattr(engine_module, "sublayer_inputs", lambda model: None)  # the engine without the skip
    plain, without = run()
    assert torch.equal(skipping, plain)
    final_norms = without - S * L  # every sub-layer's pre-norm ran without the skip
    assert with_skips == int(plan.compute.sum()) + final_norms
    assert not any("forward" in m.__dict__ for m in model.modules())  # detach() restored every module
