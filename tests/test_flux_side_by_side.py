"""benchmarks/flux_side_by_side.py on the bundled flux-mnist through FluxPipeline, at a tiny size (4 images, 6 steps).

Each tool's adapter must attach to the pipeline, really skip work (fewer executed Linear multiply-adds than the
uncached run, counted by the script's hooks), and leave the pipeline bit-identical to before once removed. The
settings are chosen so that every adaptive tool caches at 6 steps: thresholds high enough to pass, warm-ups short.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # FluxPipeline imports it

TINY = ["--images", "4", "--batch-size", "4", "--steps", "6", "--repeats", "1", "--latency-batch", "2"]
TINY += ["--n-boot", "10"]
# Thresholds and warm-ups at which every adaptive tool caches within 6 steps
SKIPPING = ["--fbc-thresholds", "1", "--magcache-thresholds", "1", "--magcache-calibration-images", "2"]
SKIPPING += ["--taylorseer-warmup", "1", "--taylorseer-attn-intervals", "2", "--taylorseer-sublayer-intervals", "2"]
SKIPPING += ["--pab-ranges", "2", "--dbcache-thresholds", "1", "--dbcache-warmups", "1"]
SKIPPING += ["--calibrator-threshold", "1", "--calibrator-warmup", "1", "--fewer-steps", "3"]
SKIPPING += ["--l2c-plans", "fora=2", "taylorseer-o2=2"]
DIFFUSERS = [
    "diffusers FirstBlockCache",
    "diffusers TaylorSeer (attention)",
    "diffusers TaylorSeer (sub-layers)",
    "diffusers MagCache",
    "diffusers FasterCache",
    "diffusers PAB",
]
L2C = ["l2c FORA plan", "l2c TaylorSeer-o2 plan", "l2c learned schedule", "fewer steps"]
FEWER = ["l2c learned schedule on 4 steps", "diffusers TaylorSeer (sub-layers) on 4 steps"]
CACHE_DIT = ["cache-dit DBCache", "cache-dit DBCache+TaylorSeer", "cache-dit DBCache+FoCa", "cache-dit DBCache+DMD"]
CACHE_DIT += ["cache-dit steps mask"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fsbs(load_benchmark):
    return load_benchmark("flux_side_by_side")


def _router(path: Path, steps: int) -> Path:
    from l2c.cache.plan import cache_steps_for
    from l2c.router.files import save_router
    from l2c.router.router import Router

    router = Router(steps, 10, cache_steps_for("alternate", steps), generator=torch.Generator().manual_seed(0))
    save_router(router, path, {"steps": steps, "threshold": 0.5})
    return path


@pytest.fixture(scope="module")
def setup(fsbs, tmp_path_factory):
    """(bench, rows by family, uncached latents, uncached work) shared by the adapter tests."""
    out = tmp_path_factory.mktemp("fsbs")
    routers = [str(_router(out / "flux-6-2x.safetensors", 6)), str(_router(out / "flux-s4-2x.safetensors", 4))]
    argv = [*TINY, *SKIPPING, "--routers", *routers, "--taylorseer-fewer-steps", "4", "--masks", "ultra"]
    args = fsbs.parse_args([*argv, "--out", str(out)])
    bench = fsbs.Bench(args)
    rows, _ = fsbs.build_rows(args, bench)
    with torch.no_grad():
        x, work = fsbs.sample_all(bench, fsbs.Method())
    return bench, {m.family: m for m in rows}, x, work


def _check_adapter(fsbs, setup, family):
    bench, rows, uncached, work = setup
    method = rows[family]
    before, children = fsbs.snapshot(bench.transformer), list(bench.transformer._modules)
    with torch.no_grad():
        method.attach(bench)
        try:
            x, cached_work = fsbs.sample_all(bench, method)
            again, _ = fsbs.sample_all(bench, method)  # state from the first run must not leak into the second
        finally:
            method.detach(bench)
        fsbs.check_restored(bench.transformer, before, method)
        assert list(bench.transformer._modules) == children  # MagCache picks its head and tail in child order
        restored, _ = fsbs.sample_all(bench, fsbs.Method())
    assert cached_work["linear_macs_per_image"] < work["linear_macs_per_image"], family
    assert not torch.equal(x, uncached) and torch.isfinite(x).all()
    assert torch.equal(x, again), f"{family}: two runs on the same seeds differ"
    assert torch.equal(restored, uncached), f"{family}: removal left the pipeline changed"


@pytest.mark.parametrize("family", DIFFUSERS + L2C + FEWER)
def test_adapter_skips_and_removes(fsbs, setup, family):
    _check_adapter(fsbs, setup, family)


@pytest.mark.parametrize("family", CACHE_DIT)
def test_cache_dit_adapter_skips_and_removes(fsbs, setup, family):
    pytest.importorskip("cache_dit")
    _check_adapter(fsbs, setup, family)


def test_rows_on_fewer_steps_run_their_own_step_count(fsbs, setup):
    """A schedule searched on 4 steps samples 4 steps: with every sub-layer computed it is the 4-step sampler bit for
    bit; cached, and the TaylorSeer control on 4 steps, it runs less than the 4-step sampler."""
    from l2c.cache.plan import CachePlan

    bench, rows, _, _ = setup
    assert rows["l2c learned schedule on 4 steps"].num_steps(bench) == 4
    assert rows["diffusers TaylorSeer (sub-layers) on 4 steps"].num_steps(bench) == 4
    with torch.no_grad():
        four, four_work = fsbs.sample_all(bench, fsbs.FewerSteps(4))
        full = fsbs.L2C("l2c learned schedule on 4 steps", "all computed", CachePlan.full(4, 10), "full", steps=4)
        full.attach(bench)
        try:
            x, work = fsbs.sample_all(bench, full)
        finally:
            full.detach(bench)
    assert torch.equal(x, four) and work == four_work
    for family in FEWER:
        method = rows[family]
        with torch.no_grad():
            method.attach(bench)
            try:
                _, cached = fsbs.sample_all(bench, method)
            finally:
                method.detach(bench)
        assert cached["sublayers_per_image"] < four_work["sublayers_per_image"], family


def test_cache_dit_leaves_the_reference_pipeline_alone(fsbs, setup):
    pytest.importorskip("cache_dit")
    from diffusers import FluxPipeline

    bench, rows, _, _ = setup
    original = FluxPipeline.__call__
    rows["cache-dit DBCache"].attach(bench)
    try:
        assert FluxPipeline.__call__ is not original  # cache-dit patches the class ...
        assert type(bench.reference).__call__ is original  # ... the timing reference keeps the original
    finally:
        rows["cache-dit DBCache"].detach(bench)
    assert FluxPipeline.__call__ is original


def test_uncached_work_counts(fsbs, setup):
    bench, _, _, work = setup
    calls = 2 * bench.steps  # true CFG: a "cond" and an "uncond" call per step
    assert work["sublayers_per_image"] == 10 * calls  # 2 double blocks x 3 + 4 single blocks
    assert work["linear_macs_per_image"] > 0


def test_magcache_calibrates_on_held_out_seeds(fsbs, setup):
    bench, _, _, _ = setup
    ratios = fsbs.magcache_ratios(bench, 2)
    assert len(ratios) == bench.steps and ratios[0] == 1.0
    assert all(r > 0 for r in ratios)


def test_store_resumes_and_refuses(fsbs, tmp_path, capsys):
    argv = [*TINY, "--only", "fewer", "--fewer-steps", "3", "--out", str(tmp_path)]
    assert fsbs.main(argv) == 0
    rows = (tmp_path / "sweep.jsonl").read_text()
    report = json.loads((tmp_path / "side_by_side.json").read_text())
    assert [r["key"] for r in report["rows"]] == ["uncached | -", "fewer steps | 3 steps"]
    assert report["uncached_recheck"]["identical"] is True
    assert report["rows"][0]["psnr"] is None  # identical to itself: infinite PSNR, which JSON has not
    assert (tmp_path / "side_by_side.png").read_bytes()[:4] == b"\x89PNG"
    assert "FID Pareto front: " in (tmp_path / "side_by_side.md").read_text()
    capsys.readouterr()
    assert fsbs.main(argv) == 0  # resumed: nothing left to measure
    assert "2 of 2 rows already" in capsys.readouterr().out
    assert (tmp_path / "sweep.jsonl").read_text() == rows
    assert fsbs.main([*argv[:1], "6", *argv[2:]]) == 2  # other --images: refused before any sampling
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad",
    [["--images", "1"], ["--cfg", "0.5"], ["--dbcache-blocks", "F0B1"], ["--routers", "missing.safetensors"]],
)
def test_bad_input_exits_2(fsbs, tmp_path, capsys, bad):
    assert fsbs.main([*bad, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flux_side_by_side: error:")
