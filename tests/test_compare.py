"""Baseline cache plans (FORA, random, from bottom / top, smallest error) and the comparison harness."""

import json

import numpy as np
import pytest
import torch

from l2c.cache.baselines import depth_plan, error_plan, fora_plan, random_plan, reused_count
from l2c.cache.layout import sublayers
from l2c.cache.macs import profile_macs
from l2c.cache.smoothcache import alpha_for_budget, calibrate_changes, smoothcache_plan
from l2c.cli import main
from l2c.jobs.compare import Method, equal_cost_steps, format_rows, run_comparison, standard_methods
from l2c.jobs.generate import SampleConfig, generate, to_uint8
from l2c.models import create_model
from l2c.router.files import save_router
from l2c.router.router import Router
from l2c.sampling.diffusion import default_spec

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


def _changes():
    changes = torch.ones(2, 5, 5).triu(1)  # every reuse costs 1.0 unless set below
    # attention: reusing evaluation 0 costs 0.1 at 1 and 0.3 at 2; reusing 2 costs 0.05 at 3 and 0.08 at 4
    changes[0, 0, 1], changes[0, 0, 2], changes[0, 2, 3], changes[0, 2, 4] = 0.1, 0.3, 0.05, 0.08
    return changes


def test_smoothcache_plan_follows_the_calibrated_changes():
    plan = smoothcache_plan(_changes(), 4, alpha=0.2)
    assert plan.compute[:, 0].tolist() == [True, False, True, False, False]  # attention sub-layers 0 and 2
    assert torch.equal(plan.compute[:, 0], plan.compute[:, 2])
    assert bool(plan.compute[:, 1::2].all())  # MLP changes too much to reuse
    # at most one reuse in a row: evaluation 4 is 2 after the last computed one
    assert smoothcache_plan(_changes(), 4, alpha=0.2, max_reuse=1).compute[:, 0].tolist() == [
        True,
        False,
        True,
        False,
        True,
    ]
    # the α closest to a budget of 4 reused evaluations (attention at 3 and 4, two blocks) is just above 0.08
    alpha = alpha_for_budget(_changes(), 4, reuse=4)
    assert 0.08 < alpha < 0.1
    assert int((~smoothcache_plan(_changes(), 4, alpha).compute).sum()) == 4


def test_calibrate_changes_is_the_mean_relative_l1_per_kind(tiny):
    model, _ = tiny
    spec = default_spec("dit")
    cfg = SampleConfig(steps=4, guidance_scale=1.5, batch_size=4)
    run = lambda: generate(model, spec, [0, 1], [3, 4], cfg, progress=False)  # noqa: E731
    changes = calibrate_changes(model, run, 4)
    upper = torch.triu_indices(4, 4, 1)
    assert changes.shape == (2, 4, 4) and bool((changes.tril() == 0).all())
    assert bool((changes[:, upper[0], upper[1]] > 0).all())
    outputs = []
    handle = sublayers(model)[3].register_forward_hook(lambda m, i, o: outputs.append(o.clone()))
    run()
    handle.remove()
    mlp1 = (outputs[2] - outputs[0]).abs().sum() / outputs[0].abs().sum()  # block 1's MLP, reusing 0 at 2
    outputs.clear()
    handle = sublayers(model)[1].register_forward_hook(lambda m, i, o: outputs.append(o.clone()))
    run()
    handle.remove()
    mlp0 = (outputs[2] - outputs[0]).abs().sum() / outputs[0].abs().sum()
    assert float(changes[1, 0, 2]) == pytest.approx(float(mlp0 + mlp1) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="step count"):
        calibrate_changes(model, run, 3)


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
    changes = torch.rand(2, 6, 6).triu(1)
    methods = standard_methods(
        router, 0.5, 6, "ddim", macs, errors=torch.rand(3, 4), changes=changes, fora=(2,), fewer_steps=(3,)
    )
    names = [m.name for m in methods]
    assert names[0].startswith("uncached") and names[1].startswith("L2C") and "FORA, interval 2" in names
    assert any(n.startswith("fewer steps: 3") for n in names) and any(n.startswith("SmoothCache") for n in names)
    budget = reused_count(router.to_plan(0.5))
    for m in methods:
        if m.name in ("random sub-layers", "from bottom", "from top", "smallest single-layer error"):
            assert reused_count(m.plan) == budget, m.name


def test_run_comparison_rows_match_direct_sampling(tiny):
    model, router = tiny
    spec = default_spec("dit")
    plan = router.to_plan(0.5)
    cfg = SampleConfig(steps=6, guidance_scale=1.5, batch_size=4)
    seeds, classes = list(range(6)), [i % 10 for i in range(6)]
    methods = [Method("uncached", 6), Method("l2c", 6, plan), Method("fewer", 4)]
    rows, images = run_comparison(
        model, spec, profile_macs("DiT-tiny"), methods, cfg, seeds, classes, repeats=1, latency_batch=3
    )
    direct = to_uint8(generate(model, spec, seeds, classes, cfg, plan=plan, progress=False))
    assert np.array_equal(images["l2c"], direct)
    assert rows[0]["psnr_db"] == float("inf") and rows[0]["speedup"] == 1.0
    for r in rows:  # (a random tiny model's images saturate, so PSNR may be infinite here)
        low, high = r["psnr_ci"]
        assert low <= r["psnr_db"] <= high
    assert rows[1]["executed"] == int(plan.compute.sum()) and rows[1]["mac_speedup"] > 1
    assert rows[2]["total"] == 4 * 4 and rows[2]["mac_speedup"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="reference"):
        run_comparison(model, spec, profile_macs("DiT-tiny"), methods[1:], cfg, seeds, classes)


def test_format_rows_prints_the_intervals():
    row = {"method": "L2C", "steps": 20, "executed": 182, "total": 240, "macs_g": 0.9, "mac_speedup": 1.3}
    row.update(latency_s=2.5, speedup=1.25, fid=15.36, fid_ci=[12.74, 19.18], class_accuracy=0.92)
    row.update(precision=0.7, recall=0.8, psnr_db=36.21, psnr_ci=[35.4, 36.9])
    reference = {**row, "method": "uncached", "psnr_db": float("inf"), "psnr_ci": [float("inf")] * 2}
    table = format_rows([reference, row])
    assert "| 15.36 [12.74, 19.18] |" in table and "| 36.2 [35.4, 36.9] |" in table
    assert table.splitlines()[2].endswith("| ∞ |")  # identical images: no interval to print


def test_compare_cli(tmp_path, tiny):
    _, router = tiny
    save_router(router, tmp_path / "r.safetensors", {"model": "DiT-tiny", "sampler": "ddim", "steps": 6})
    out = tmp_path / "cmp"
    args = ["compare", "--model", "DiT-tiny", "--random-init", "--router", str(tmp_path / "r.safetensors")]
    assert (
        main(
            [
                *args,
                "--steps",
                "6",
                "--images",
                "4",
                "--repeats",
                "1",
                "--latency-batch",
                "2",
                "--smoothcache-images",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "compare.json").read_text())
    names = [r["method"] for r in report["rows"]]
    assert names[:2] == ["uncached, 6 steps", "L2C (θ = 0.5)"] and "FORA, interval 3" in names
    assert report["rows"][0]["psnr_db"] is None  # identical to itself: infinite PSNR, stored as null
    assert report["rows"][0]["psnr_ci"] == [None, None]
    assert all(len(r["psnr_ci"]) == 2 for r in report["rows"])
    assert (out / "compare.png").exists() and "| method |" in (out / "compare.md").read_text()
    # a router for another step count is refused with the fix
    assert main([*args, "--steps", "8", "--out", str(out)]) == 2
