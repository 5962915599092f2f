"""The quality-versus-speed sweep: bootstrap intervals, Pareto front, method knobs, first-block caching, resume."""

import json

import numpy as np
import pytest
import torch

from l2c.cache.first_block import FirstBlockCache, block_linear_macs
from l2c.cache.layout import layout_for
from l2c.cache.macs import profile_macs
from l2c.cli import main
from l2c.jobs.generate import SampleConfig, generate
from l2c.jobs.pareto import best_by_range, pareto_front, range_sentences
from l2c.jobs.sweep import SweepRun, run_sweep
from l2c.jobs.sweep_store import SweepStore
from l2c.methods import METHODS, SweepContext, plan_macs
from l2c.metrics.bootstrap import bootstrap_fid, psnr_with_ci
from l2c.metrics.fid import feature_statistics, frechet_distance
from l2c.models import create_model
from l2c.router.router import Router
from l2c.sampling.diffusion import default_spec

STEPS = 8
CACHE_STEPS = [1, 3, 5, 7]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny models here spend their time in thread hand-offs: one thread is ~30x faster on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(preset="DiT-tiny", **overrides):
    torch.manual_seed(0)
    model = create_model(preset, **overrides).eval().requires_grad_(False)
    for p in model.parameters():  # adaLN-Zero starts every block as the identity: give the blocks something to do
        p.normal_(0, 0.2)
    return model


# ------------------------------------------------------------------ bootstrap intervals
def test_bootstrap_fid_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    mu_r, sigma_r = np.zeros(4), np.eye(4)
    widths = []
    for n in (100, 1600):
        f = rng.normal(0.3, 1.0, size=(n, 4))
        fid, lo, hi = bootstrap_fid(f, mu_r, sigma_r, n_boot=200)
        assert fid == pytest.approx(frechet_distance(*feature_statistics(f), mu_r, sigma_r), rel=1e-9)
        assert lo <= fid <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 4x the images, about half the width


def test_mnist_metrics_interval_brackets_the_plain_fid():
    from l2c.metrics.report import mnist_metrics

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    plain = mnist_metrics(images, pr_reference=200)
    boxed = mnist_metrics(images, pr_reference=200, n_boot=50)
    assert "fid_ci" not in plain
    assert boxed["fid"] == pytest.approx(plain["fid"], rel=1e-6)  # the interval's float64 estimate of the same FID
    assert boxed["fid_ci"][0] <= boxed["fid"] <= boxed["fid_ci"][1]


def test_psnr_interval_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 320):
        a = rng.integers(0, 256, size=(n, 4, 4, 1), dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-20, 21, size=a.shape), 0, 255).astype(np.uint8)
        psnr, lo, hi = psnr_with_ci(a, b, n_boot=300)
        mse = ((a.astype(float) - b) ** 2).mean()
        assert psnr == pytest.approx(10 * np.log10(255**2 / mse)) and lo <= psnr <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2
    assert psnr_with_ci(a, a)[0] == float("inf")


# ------------------------------------------------------------------ Pareto front and speed ranges
def test_pareto_front_on_a_hand_made_set():
    # (speedup, FID): (1.0, 10) loses to (1.5, 9); (2.0, 12) to (2.0, 11); (2.5, 30) to (3.0, 20)
    pts = [(1.0, 10), (2.0, 12), (1.5, 9), (3.0, 20), (2.0, 11), (2.5, 30), (1.2, None)]
    assert pareto_front(pts) == [2, 4, 3]
    # PSNR: higher is better; the point at 1.0x with the best PSNR is on the front
    assert pareto_front([(1.0, 40), (2.0, 30), (1.5, 29), (2.0, 30)], higher_is_better=True) == [0, 1, 3]


def _row(method, speed, fid, half=0.5):
    return {
        "method": method,
        "label": f"{method} {speed}",
        "speedup": speed,
        "fid": fid,
        "fid_ci": [fid - half, fid + half],
    }


def test_best_by_range_and_overlap_sentences():
    rows = [_row("a", 1.3, 10.0), _row("b", 1.4, 10.6), _row("c", 1.45, 14.0), _row("a", 2.5, 20.0)]
    groups = best_by_range(rows)
    assert [r["method"] for r in groups[0]["rows"]] == ["a", "b", "c"]
    lines = range_sentences(rows)
    assert "overlaps those of b 1.4" in lines[0] and "c 1.45" not in lines[0].split("overlaps")[1]
    assert lines[1].startswith("* 1.5-2x: no method")


# ------------------------------------------------------------------ every method's knob moves its cost one way
@pytest.fixture(scope="module")
def ctx():
    router = Router(STEPS, 8, CACHE_STEPS, generator=torch.Generator().manual_seed(3))
    gap = torch.arange(STEPS)[None, :] - torch.arange(STEPS)[:, None]
    changes = torch.stack([0.05 * gap, 0.08 * gap]).clamp_min(0)  # SmoothCache's change grows with the gap
    lam = [
        (f"r{i}", Router(STEPS, 8, CACHE_STEPS, generator=torch.Generator().manual_seed(i)), {"lambda": 0.1 * i})
        for i in (1, 2)
    ]
    return SweepContext(
        sampler="ddim",
        steps=STEPS,
        evaluations=STEPS,
        num_sublayers=8,
        cache_steps=CACHE_STEPS,
        macs=profile_macs("DiT-tiny", depth=4),
        router=router,
        lambda_routers=lam,
        errors=lambda: torch.rand(len(CACHE_STEPS), 8, generator=torch.Generator().manual_seed(5)),
        changes=lambda: changes,
    )


# +1: more knob, more cost (steps); -1: more knob, less cost
DIRECTION = {"fewer-steps": 1, "dpm-solver-2m": 1}


@pytest.mark.parametrize("name", [n for n in METHODS if n not in ("first-block", "l2c-lambda", "learned")])
def test_method_knob_moves_cost_monotonically(ctx, name):
    method = METHODS[name]
    values = sorted(method.defaults(ctx))
    points = method.points(ctx, values)
    assert len(points) >= 2 and all(p.method == name and p.knob == method.knob for p in points)
    costs = [plan_macs(ctx, p) for p in points]
    sign = DIRECTION.get(name, -1)
    assert all(sign * (b - a) >= 0 for a, b in zip(costs, costs[1:])), (name, values, costs)
    assert sign * (costs[-1] - costs[0]) > 0, (name, values, costs)


def test_taylorseer_newton_is_taylorseer_with_newtons_form(ctx):
    own, newton = METHODS["taylorseer-o2"].point(ctx, 3).plan, METHODS["taylorseer-o2-newton"].point(ctx, 3).plan
    assert (own.form, newton.form) == ("taylorseer", "newton")
    assert torch.equal(own.actions, newton.actions) and plan_macs(ctx, METHODS["taylorseer-o2"].point(ctx, 3)) == (
        plan_macs(ctx, METHODS["taylorseer-o2-newton"].point(ctx, 3))
    )


def test_lambda_points_come_from_the_router_files(ctx):
    points = METHODS["l2c-lambda"].points(ctx)
    assert [p.value for p in points] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert points[0].info["router"] == "r1"
    with pytest.raises(ValueError, match="needs router"):
        METHODS["l2c"].points(SweepContext("ddim", STEPS, STEPS, 8, CACHE_STEPS, ctx.macs))


def test_delta_dit_caches_rear_blocks_early_and_front_blocks_late(ctx):
    plan = METHODS["delta-dit"].point(ctx, 1).plan
    assert (~plan.compute[1]).nonzero().flatten().tolist() == [6, 7]  # early cache step: the last block
    assert (~plan.compute[5]).nonzero().flatten().tolist() == [0, 1]  # late cache step: the first block
    assert bool(plan.compute[[0, 2, 4, 6]].all())


# ------------------------------------------------------------------ first-block caching
def _sample(model, preset, runtime=None, steps=STEPS):
    arch = "dit" if preset.startswith("DiT") else "uvit"
    cfg = SampleConfig(steps=steps, guidance_scale=1.5, batch_size=3)
    return generate(model, default_spec(arch), [0, 1, 2], [1, 2, 3], cfg, progress=False, runtime_cache=runtime)


@pytest.mark.parametrize("preset", ["DiT-tiny", "U-ViT-tiny"])
def test_first_block_threshold_zero_is_uncached_bit_for_bit(preset):
    model = _model(preset, depth=4)
    ref = _sample(model, preset)
    caches = []
    out = _sample(model, preset, lambda m: caches.append(FirstBlockCache(m, 0.0)) or caches[-1])
    assert torch.equal(out, ref) and caches[0].partial_calls == 0
    assert not any("forward" in b.__dict__ for b in layout_for(model).blocks(model))  # detached


@pytest.mark.parametrize("preset", ["DiT-tiny", "U-ViT-tiny"])
def test_first_block_huge_threshold_runs_only_the_first_block_after_step_0(preset):
    model = _model(preset, depth=4)
    blocks = layout_for(model).blocks(model)
    calls = [0] * len(blocks)
    for i, b in enumerate(blocks):
        b.attn.register_forward_hook(lambda m, inp, out, i=i: calls.__setitem__(i, calls[i] + 1))
    caches = []
    _sample(model, preset, lambda m: caches.append(FirstBlockCache(m, 1e9)) or caches[-1])
    slots = 1 if preset.startswith("DiT") else 2  # U-ViT: conditional and unconditional calls, one state each
    assert calls[0] == STEPS * slots and calls[1:] == [slots] * (len(blocks) - 1)
    assert caches[0].full_calls == slots and caches[0].partial_calls == (STEPS - 1) * slots


def test_block_macs_add_up_to_the_profile():
    blocks = block_linear_macs("DiT-tiny", depth=4)
    macs = profile_macs("DiT-tiny", depth=4)
    assert len(blocks) == 4 and sum(blocks) < macs.full("paper")
    assert sum(blocks) >= sum(macs.sublayer_linear)  # the sub-layers plus each block's adaLN modulation


# ------------------------------------------------------------------ the sweep: resume, refusal, --methods
def _settings(**kw):
    return {"model": "DiT-tiny", "images": 4, **kw}


def test_sweep_resumes_and_refuses_another_run(tmp_path, monkeypatch):
    model = _model("DiT-tiny")
    ctx = SweepContext("ddim", 4, 4, 4, [1, 3], profile_macs("DiT-tiny"), block_macs=lambda: [1.0, 1.0])
    points = METHODS["fora"].points(ctx, [2]) + METHODS["first-block"].points(ctx, [0.05])
    cfg = SampleConfig(steps=4, guidance_scale=1.5, batch_size=2)

    def run():
        store = SweepStore(tmp_path, _settings())
        return SweepRun(model, default_spec("dit"), ctx, cfg, [0, 1, 2, 3], [0, 1, 2, 3], store, 1, 2, 20, False)

    rows = run_sweep(run(), points)
    assert [r["method"] for r in rows] == ["uncached", "fora", "first-block"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["psnr"] is None and rows[1]["psnr"] > 0
    assert rows[1]["mac_speedup"] > 1 and rows[1]["latency_batch"] == 2 and len(rows[1]["latency_runs_s"]) == 1
    assert rows[2]["total"] == 16 and rows[2]["full_evaluations"] >= 1
    sampled = []
    import l2c.jobs.sweep as sweep

    monkeypatch.setattr(sweep, "generate", lambda *a, **k: sampled.append(1))
    more = METHODS["fora"].points(ctx, [2, 3])
    with pytest.raises(TypeError):  # only FORA n = 3 is sampled: the monkeypatched generate returns nothing
        run_sweep(run(), more)
    assert len(sampled) == 1
    monkeypatch.undo()
    assert len(run_sweep(run(), more)) == 4  # the reference, n = 2 and first-block kept; n = 3 added
    with pytest.raises(ValueError, match="images: 4 there, 8 now"):
        SweepStore(tmp_path, _settings(images=8))


def test_sweep_cli_methods_subset(tmp_path):
    args = [
        "compare",
        "--sweep",
        "--model",
        "DiT-tiny",
        "--random-init",
        "--steps",
        "4",
        "--images",
        "4",
        "--batch-size",
        "2",
        "--repeats",
        "1",
        "--latency-batch",
        "2",
        "--bootstrap",
        "20",
        "--out",
        str(tmp_path),
        "--methods",
        "fora",
        "fewer-steps",
        "--values",
        "fora=2",
        "--values",
        "fewer-steps=2,3",
    ]
    assert main(args) == 0
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert [(r["method"], r["knob"]["value"]) for r in rows] == [
        ("uncached", 4),
        ("fora", 2),
        ("fewer-steps", 2),
        ("fewer-steps", 3),
    ]
    required = {"method", "knob", "steps", "executed", "total", "macs_per_image", "mac_speedup", "latency_s", "speedup"}
    assert all(required | {"psnr", "psnr_ci", "latency_spread_s", "latency_batch"} <= set(r) for r in rows)
    assert (tmp_path / "compare.png").exists() and "#### fora" in (tmp_path / "compare.md").read_text()
    assert main([*args[:-4], "--values", "fora=2", "--images", "6"]) == 2  # another run in the same folder
