"""Plans, reports, heat-maps, SmoothCache, Δ-DiT, the schedule search and the SmoothCache interchange read the
model's flat sub-layer list (l2c.cache.layout.describe), not "even index = attention, odd = MLP, L // 2 blocks".

The model: a tiny diffusers FLUX with one double block (joint attention, MLP, context MLP) and two single blocks
(one fused sub-layer each): 5 sub-layers, blocks [0, 0, 0, 1, 2], an odd count that no pairing fits."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from l2c.cache.layout import describe, group_by_block, pairs, sublayer_blocks, sublayer_kinds  # noqa: E402
from l2c.cache.plan import COMPUTE, FORECAST1, REUSE, CachePlan  # noqa: E402
from l2c.cache.smoothcache import alpha_for_budget, calibrate_changes, smoothcache_plan  # noqa: E402
from l2c.integrations.schedules import components_of, from_smoothcache, to_smoothcache  # noqa: E402
from l2c.methods import SweepContext  # noqa: E402
from l2c.methods.delta_dit import delta_dit_plan  # noqa: E402
from l2c.router.report import format_table, heatmap_panels, plot_router, router_summary  # noqa: E402
from l2c.router.router import Router  # noqa: E402
from l2c.training.schedule_search import _moves, fill_budget, trim_to_budget  # noqa: E402

KINDS = ["joint_attn", "mlp", "mlp_context", "fused", "fused"]


@pytest.fixture(scope="module")
def flux():
    torch.manual_seed(0)
    from test_layouts import MODELS

    model = diffusers.FluxTransformer2DModel(**{**MODELS["flux"][1], "num_layers": 1}).eval()
    with torch.no_grad():  # non-zero gates, so that every sub-layer's output changes over time
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def _run(model, times):
    g = torch.Generator().manual_seed(0)
    x, text, pooled = torch.randn(1, 16, 4, generator=g), torch.randn(1, 8, 32, generator=g), torch.randn(1, 32)
    ids = dict(img_ids=torch.randn(16, 3, generator=g), txt_ids=torch.randn(8, 3, generator=g))
    with torch.no_grad():
        for t in times:
            model(x, text, pooled, timestep=torch.tensor([t]), **ids, return_dict=False)


def test_the_layout_is_not_pairs(flux):
    assert sublayer_kinds(flux) == KINDS
    assert sublayer_blocks(flux) == [0, 0, 0, 1, 2]
    assert group_by_block(sublayer_blocks(flux)) == [[0, 1, 2], [3], [4]]
    with pytest.raises(ValueError, match="5 sub-layers are not"):
        pairs(5)


def test_plan_summary_per_kind(flux):
    # evaluation 1 computes the joint attention and the first single block only
    plan = CachePlan(torch.tensor([[1] * 5, [1, 0, 0, 1, 0]], dtype=torch.bool))
    s = plan.summary([1], sublayer_kinds(flux))
    assert (s["executed"], s["total"]) == (2, 5)
    assert (s["executed_attn"], s["total_attn"]) == (1, 1)  # the even-index reading would say 2 of 3
    assert (s["executed_other"], s["total_other"]) == (1, 4)
    assert (s["executed_fused"], s["total_fused"]) == (1, 2)
    assert (s["executed_mlp"], s["executed_mlp_context"]) == (0, 0)
    assert plan.summary([1]) == {"executed": 2, "total": 5}  # no kinds, odd count: no split is guessed
    with pytest.raises(ValueError, match="4 kinds"):
        plan.summary(kinds=KINDS[:4])


def test_router_summary_table_and_heatmap(flux, tmp_path):
    router = Router(4, 5, [1, 3])
    router.logits.data[:] = torch.tensor([3.0, -3.0, -3.0, 3.0, -3.0])  # executed: joint attention, single block 1
    layout = describe(flux)
    s = router_summary(router, 0.5, layout=layout)
    assert s["per_step"] == [2, 2]
    assert s["per_step_attn"] == [1, 1] and s["per_step_fused"] == [1, 1]
    assert s["per_step_mlp"] == [0, 0] and s["per_step_mlp_context"] == [0, 0]
    assert (s["executed_attn"], s["total_attn"], s["executed_fused"], s["total_fused"]) == (2, 2, 2, 4)
    table = format_table(s)
    assert "fused" in table.splitlines()[0] and "fused attention + MLP 2/4" in table
    panels = heatmap_panels(5, layout)
    assert [(title, cols, blocks) for title, cols, blocks in panels] == [
        ("joint attention", [0], [0]),
        ("MLP", [1], [0]),
        ("context MLP", [2], [0]),
        ("fused attention + MLP", [3, 4], [1, 2]),
    ]
    plot_router(router, 0.5, tmp_path / "h.png", layout=layout)
    assert (tmp_path / "h.png").stat().st_size > 1000
    bare = router_summary(router, 0.5)  # without the layout an odd count is not split by guess
    assert "executed_attn" not in bare and "per_step_attn" not in bare and bare["per_step"] == [2, 2]
    assert "attention" not in format_table(bare)
    assert [cols for _, cols, _ in heatmap_panels(5)] == [[0, 1, 2, 3, 4]]


def test_smoothcache_calibrates_and_plans_per_kind(flux):
    changes = calibrate_changes(flux, lambda: _run(flux, [1.0, 0.6, 0.3]), 3)
    assert changes.shape == (4, 3, 3)  # joint_attn, mlp, mlp_context, fused
    assert bool((changes[:, 0, 1:] > 0).all())
    made = torch.ones(4, 3, 3).triu(1)
    made[3] = 0.01  # only the fused sub-layers change little
    plan = smoothcache_plan(made, KINDS, alpha=0.1)
    assert plan.compute.tolist() == [[True] * 5, [True, True, True, False, False], [True, True, True, False, False]]
    assert 0.01 < alpha_for_budget(made, KINDS, reuse=4) < 1.0
    with pytest.raises(ValueError, match="4 kinds"):
        smoothcache_plan(made, 6, alpha=0.1)  # a count reads as DiT pairs: 2 kinds


def test_delta_dit_caches_whole_blocks(flux):
    blocks = sublayer_blocks(flux)
    plan = delta_dit_plan(4, 5, [1, 3], 1, boundary=2, sublayer_blocks=blocks)
    assert plan.compute[1].tolist() == [True, True, True, True, False]  # early: the rear block (single block 1)
    assert plan.compute[3].tolist() == [False, False, False, True, True]  # late: the front block (all three)
    ctx = SweepContext("ddim", 4, 4, 5, [1, 3], None, kinds=sublayer_kinds(flux), blocks=blocks)
    assert ctx.depth == 3
    with pytest.raises(ValueError, match="0..3 blocks"):
        delta_dit_plan(4, 5, [1, 3], 4, 2, blocks)


class _Fraction:  # MAC fraction = share of computed cells (stands in for a MacProfile)
    def fraction(self, plan):
        return float(plan.compute.float().mean())


def test_schedule_search_moves_whole_blocks(flux):
    blocks = group_by_block(sublayer_blocks(flux))
    actions = torch.full((3, 5), FORECAST1, dtype=torch.int8)
    actions[0] = actions[1] = COMPUTE
    moved = {
        tuple(((m[1] != COMPUTE) & (m[2] == COMPUTE)).nonzero().flatten().tolist()) for m in _moves(actions, blocks)
    }
    assert {(0, 1, 2), (3,), (4,)} <= moved  # one block's computation shifted: 3, 1 and 1 sub-layers
    assert not any(len(cols) == 2 for cols in moved)  # never an (attention, MLP) pair

    def error(plan):  # dropping single block 2 (sub-layer 4) costs least, then single block 1
        return float(((~plan.compute).float() @ torch.tensor([3.0, 3.0, 3.0, 2.0, 1.0])).sum())

    start = torch.full((3, 5), COMPUTE, dtype=torch.int8)
    trimmed, _ = trim_to_budget(start, error, _Fraction(), 0.88, REUSE, progress=False, blocks=blocks)
    assert (trimmed != COMPUTE).nonzero().tolist() == [[1, 4], [2, 4]]
    filled, added = fill_budget(trimmed, error, _Fraction(), 0.95, progress=False, blocks=blocks)
    assert len(added) == 1 and added[0][1] == 2 and int((filled != COMPUTE).sum()) == 1


def test_smoothcache_interchange_keys_by_branch_and_block(flux):
    layout = describe(flux)
    plan = CachePlan(torch.tensor([[1] * 5, [1, 0, 1, 1, 0], [0, 1, 1, 1, 0]], dtype=torch.bool))
    schedule = to_smoothcache(plan, layout)
    assert list(schedule) == ["attn-0", "ff-0", "ff_context-0", "proj_out-1", "proj_out-2"]
    assert schedule["proj_out-2"] == [1, 0, 0] and schedule["ff-0"] == [1, 0, 1]
    assert torch.equal(from_smoothcache(schedule, flux).compute, plan.compute)
    assert to_smoothcache(plan, flux) == schedule
    assert components_of(flux) == ("attn", "ff", "ff_context", "proj_out")
    with pytest.raises(ValueError, match="same schedule"):
        to_smoothcache(plan, layout, shared=True)  # the two single blocks differ
    assert from_smoothcache({"proj_out": [1, 0, 0]}, layout).compute[1].tolist() == [True] * 3 + [False] * 2
    with pytest.raises(ValueError, match="proj_out-3"):
        from_smoothcache({"proj_out-3": [1, 0]}, layout)
