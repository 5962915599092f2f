"""Baseline cache plans (FORA, random, from bottom / top, smallest error) and the comparison harness."""

import json

import numpy as np
import pytest
import torch

from l2c.cache.baselines import depth_plan, error_plan, fora_plan, random_plan, reused_count
from l2c.cache.macs import profile_macs
from l2c.cli import main
from l2c.compare import Method, equal_cost_steps, run_comparison, standard_methods
from l2c.diffusion import default_spec
from l2c.models import create_model
from l2c.pipeline import SampleConfig, generate, to_uint8
from l2c.router.files import save_router
from l2c.router.router import Router

CACHE_STEPS = [1, 3, 5]  # DDIM-6, the official alternation


def test_fora_computes_every_nth_evaluation():
    plan = fora_plan(7, 4, 3)
    assert plan.compute[:, 0].tolist() == [True, False, False, True, False, False, True]
    assert bool((plan.compute == plan.compute[:, :1]).all())  # all sub-layers together
    with pytest.raises(ValueError):
        fora_plan(7, 4, 0)


def test_random_plan_reuses_the_budget_in_cache_steps_only():
    plan = random_plan(6, 4, CACHE_STEPS, reuse=5, seed=1)
    assert reused_count(plan) == 5
    assert bool(plan.compute[[0, 2, 4]].all())  # full steps untouched
    assert not torch.equal(plan.compute, random_plan(6, 4, CACHE_STEPS, reuse=5, seed=2).compute)
    with pytest.raises(ValueError, match="cannot reuse 13"):
        random_plan(6, 4, CACHE_STEPS, reuse=13)


def test_depth_plans_take_layers_from_one_end_spread_over_steps():
    # Budget 4 over 3 cache steps: every cache step loses sub-layer 0 (bottom), then the first cache step also
    # loses sub-layer 1.
    bottom = depth_plan(6, 4, CACHE_STEPS, reuse=4, from_top=False)
    assert (~bottom.compute[1]).nonzero().flatten().tolist() == [0, 1]
    assert (~bottom.compute[3]).nonzero().flatten().tolist() == [0]
    assert (~bottom.compute[5]).nonzero().flatten().tolist() == [0]
    top = depth_plan(6, 4, CACHE_STEPS, reuse=4, from_top=True)
    assert (~top.compute[1]).nonzero().flatten().tolist() == [2, 3]
    assert (~top.compute[5]).nonzero().flatten().tolist() == [3]


def test_error_plan_reuses_the_smallest_errors():
    errors = torch.tensor([[5.0, 0.1, 7.0, 8.0], [0.3, 9.0, 9.0, 9.0], [9.0, 9.0, 0.2, 9.0]])
    plan = error_plan(6, CACHE_STEPS, errors, reuse=3)
    assert sorted(map(tuple, (~plan.compute).nonzero().tolist())) == [(1, 1), (3, 0), (5, 2)]
    with pytest.raises(ValueError, match="rows"):
        error_plan(6, [1, 3], errors, reuse=1)


def test_equal_cost_steps():
    assert equal_cost_steps(20, 0.78, "ddim") == 16
    assert equal_cost_steps(20, 0.78, "dpm-solver-2") == 16  # even NFE
    assert equal_cost_steps(20, 0.74, "dpm-solver-2") == 14
    assert equal_cost_steps(4, 0.1, "ddim") == 2


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("DiT-tiny").eval().requires_grad_(False)
    router = Router(6, 4, CACHE_STEPS, generator=torch.Generator().manual_seed(3))
    return model, router


def test_standard_methods_share_the_routers_budget(tiny):
    _, router = tiny
    macs = profile_macs("DiT-tiny")
    methods = standard_methods(router, 0.5, 6, "ddim", macs, errors=torch.rand(3, 4), fora=(2,), fewer_steps=(3,))
    names = [m.name for m in methods]
    assert names[0].startswith("uncached") and names[1].startswith("L2C") and "FORA, interval 2" in names
    assert any(n.startswith("fewer steps: 3") for n in names)
    budget = reused_count(router.to_plan(0.5))
    for m in methods:
        if m.name in ("random sub-layers", "from bottom", "from top", "smallest single-layer error"):
            assert reused_count(m.plan) == budget, m.name


def test_run_comparison_rows_match_direct_sampling(tiny):
    model, router = tiny
    spec = default_spec("dit")
    plan = router.to_plan(0.5)
    cfg = SampleConfig(steps=6, cfg=1.5, batch_size=4)
    seeds, classes = list(range(6)), [i % 10 for i in range(6)]
    methods = [Method("uncached", 6), Method("l2c", 6, plan), Method("fewer", 4)]
    rows, images = run_comparison(
        model, spec, profile_macs("DiT-tiny"), methods, cfg, seeds, classes, repeats=1, latency_batch=3
    )
    direct = to_uint8(generate(model, spec, seeds, classes, cfg, plan=plan, progress=False))
    assert np.array_equal(images["l2c"], direct)
    assert rows[0]["psnr_db"] == float("inf") and rows[0]["speedup"] == 1.0
    assert rows[1]["executed"] == int(plan.compute.sum()) and rows[1]["mac_speedup"] > 1
    assert rows[2]["total"] == 4 * 4 and rows[2]["mac_speedup"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="reference"):
        run_comparison(model, spec, profile_macs("DiT-tiny"), methods[1:], cfg, seeds, classes)


def test_compare_cli(tmp_path, tiny):
    _, router = tiny
    save_router(router, tmp_path / "r.safetensors", {"model": "DiT-tiny", "sampler": "ddim", "steps": 6})
    out = tmp_path / "cmp"
    args = ["compare", "--model", "DiT-tiny", "--random-init", "--router", str(tmp_path / "r.safetensors")]
    assert (
        main([*args, "--steps", "6", "--images", "4", "--repeats", "1", "--latency-batch", "2", "--out", str(out)]) == 0
    )
    report = json.loads((out / "compare.json").read_text())
    names = [r["method"] for r in report["rows"]]
    assert names[:2] == ["uncached, 6 steps", "L2C (θ = 0.5)"] and "FORA, interval 3" in names
    assert report["rows"][0]["psnr_db"] is None  # identical to itself: infinite PSNR, stored as null
    assert (out / "compare.png").exists() and "| method |" in (out / "compare.md").read_text()
    # a router for another step count is refused with the fix
    assert main([*args, "--steps", "8", "--out", str(out)]) == 2
