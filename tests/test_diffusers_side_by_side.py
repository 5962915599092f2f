"""benchmarks/diffusers_side_by_side.py end to end at a tiny size (8 images, 4 DDIM steps), called in-process.

Executed sub-layers per image, for 4 steps x 12 sub-layers = 48: uncached 48; a first-block cache that reuses every
step after the first computes the 12 of step 0 plus block 0's two sub-layers at each of the 3 others = 18.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

TINY = ["--images", "8", "--batch-size", "8", "--steps", "4", "--repeats", "1", "--latency-batch", "4"]
TINY += ["--n-boot", "20"]
ROW_KEYS = {
    "method",
    "setting",
    "latency_s",
    "speedup",
    "executed_fraction",
    "executed_per_image",
    "fid",
    "fid_ci",
    "accuracy",
    "psnr",
    "psnr_ci",
    "images",
    "steps",
    "identical_to_uncached",
}
FIRST_BLOCK_ONLY = 18 / 48  # see the module doc


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A 6-block model at batch 8 runs fastest on one thread, and a second thread only contends on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sbs(load_benchmark):
    return load_benchmark("diffusers_side_by_side")


def _router(path: Path, steps: int) -> Path:
    from l2c.cache.plan import cache_steps_for
    from l2c.router.files import save_router
    from l2c.router.router import Router

    router = Router(steps, 12, cache_steps_for("alternate", steps), generator=torch.Generator().manual_seed(0))
    save_router(router, path, {"arch": "dit", "sampler": "ddim", "steps": steps, "threshold": 0.5})
    return path


def _rows(out: Path) -> dict[tuple[str, str], dict]:
    report = json.loads((out / "side_by_side.json").read_text())
    return {(r["method"], r["setting"]): r for r in report["rows"]}


@pytest.fixture(scope="module")
def l2c_and_diffusers(sbs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sbs")
    router = _router(out / "router.safetensors", 4)
    argv = [*TINY, "--out", str(out), "--methods", "l2c", "diffusers", "--routers", str(router)]
    argv += ["--l2c-plans", "fora=2", "taylorseer-o2=1", "--fbc-thresholds", "0,1000"]
    argv += ["--diffusers-taylorseer-intervals", "2", "--diffusers-taylorseer-warmup", "1"]
    assert sbs.main(argv) == 0
    return out


def test_writes_the_three_files(l2c_and_diffusers):
    out = l2c_and_diffusers
    report = json.loads((out / "side_by_side.json").read_text())
    assert {"settings", "device", "notes", "rows", "uncached_recheck"} <= set(report)
    assert report["uncached_recheck"]["identical"] is True
    for row in report["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["images"] == 8 and row["steps"] == 4 and row["latency_s"] > 0
    assert report["rows"][0]["method"] == "uncached"
    assert report["rows"][0]["executed_fraction"] == 1.0
    assert "| method | setting |" in (out / "side_by_side.md").read_text()
    assert (out / "side_by_side.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*.tmp*"))  # atomic writes leave no temporary file


def test_all_compute_l2c_plan_equals_uncached(l2c_and_diffusers):
    rows = _rows(l2c_and_diffusers)
    full = rows["l2c TaylorSeer o2", "interval 1"]  # interval 1: every sub-layer computed at every step
    assert full["identical_to_uncached"] and full["executed_fraction"] == 1.0
    assert full["psnr"] is None  # infinite PSNR: JSON has no infinity
    fora = rows["l2c FORA", "interval 2"]
    assert fora["executed_fraction"] == 0.5 and not fora["identical_to_uncached"] and fora["psnr"] > 0


def test_router_row_executes_its_plan(l2c_and_diffusers):
    from l2c.integrations.diffusers import resolve_plan

    (row,) = [r for (method, _), r in _rows(l2c_and_diffusers).items() if method == "l2c router"]
    plan = resolve_plan(l2c_and_diffusers / "router.safetensors")
    assert row["executed_per_image"] == int(plan.compute.sum())  # counted calls = the plan's computed cells


def test_first_block_cache(l2c_and_diffusers):
    rows = _rows(l2c_and_diffusers)
    assert rows["diffusers FirstBlockCache", "threshold 0"]["identical_to_uncached"]
    reused = rows["diffusers FirstBlockCache", "threshold 1000"]
    assert reused["executed_fraction"] == pytest.approx(FIRST_BLOCK_ONLY)


def test_diffusers_taylorseer_defaults_hook_nothing(l2c_and_diffusers):
    report = json.loads((l2c_and_diffusers / "side_by_side.json").read_text())
    assert any("default identifiers hook 0 modules" in note for note in report["notes"])
    row = _rows(l2c_and_diffusers)["diffusers TaylorSeer", "interval 2 order 1 warmup 1"]
    assert row["executed_fraction"] < 1.0  # the identifiers the script passes do hook attn1 and ff


def test_cache_dit_rows(sbs, tmp_path):
    pytest.importorskip("cache_dit")
    argv = [*TINY, "--out", str(tmp_path), "--methods", "cache-dit", "--dbcache-thresholds", "0,1"]
    assert sbs.main([*argv, "--dbcache-warmup", "1"]) == 0
    rows = _rows(tmp_path)
    for family in ("cache-dit DBCache", "cache-dit DBCache+TaylorSeer"):
        never = next(r for (m, s), r in rows.items() if m == family and " R0 " in s)
        always = next(r for (m, s), r in rows.items() if m == family and " R1 " in s)
        assert never["identical_to_uncached"] and never["cache_dit_cached_steps_per_run"] == 0
        assert always["executed_fraction"] == pytest.approx(FIRST_BLOCK_ONLY)
        assert always["cache_dit_cached_steps_per_run"] == 3  # steps 1..3 after the one warm-up step
    report = json.loads((tmp_path / "side_by_side.json").read_text())
    assert report["uncached_recheck"]["identical"] is True  # disable_cache (plus cleanup) restored the model


@pytest.mark.parametrize("family", ["l2c", "cache-dit", "diffusers"])
def test_repeated_runs_repeat(sbs, family):
    # Each method must start every sampling run clean: the same seeds twice give the same images, and removal
    # gives back the uncached ones (cache-dit's transformer-only context needs refresh_context for the first part).
    if family == "cache-dit":
        pytest.importorskip("cache_dit")
    args = sbs.parse_args([*TINY, "--methods", family, "--l2c-plans", "fora=2", "--dbcache-thresholds", "0.3"])
    args.dbcache_warmup, args.fbc_thresholds, args.diffusers_taylorseer_intervals = 1, [0.3], []
    bench = sbs.setup_bench(args)
    methods, _ = sbs.build_methods(args, bench)
    method, seeds = methods[1], bench.seeds[:4]
    with torch.no_grad():
        plain = sbs.sample(bench, sbs.Method(), seeds)
        method.attach(bench)
        first, second = sbs.sample(bench, method, seeds), sbs.sample(bench, method, seeds)
        method.detach(bench)
        after = sbs.sample(bench, sbs.Method(), seeds)
    assert not torch.equal(first, plain)  # it did cache something
    assert torch.equal(first, second) and torch.equal(after, plain)


@pytest.mark.parametrize(
    "argv",
    [
        ["--images", "1"],
        ["--batch-size", "0"],
        ["--dbcache-thresholds", "abc"],
        ["--fbc-thresholds", "-1"],
        ["--l2c-plans", "bogus=2"],
        ["--l2c-plans", "fora=0"],
        ["--guidance", "nan"],
        ["--methods", "teacache"],
        ["--model", "/nonexistent/folder"],
        ["--routers", "/nonexistent/router.safetensors"],
        ["--routers", "WRONG_STEPS"],
    ],
)
def test_bad_input_exits_2(sbs, tmp_path, capsys, argv):
    argv = [str(_router(tmp_path / "r6.safetensors", 6)) if a == "WRONG_STEPS" else a for a in argv]
    out = tmp_path / "out"
    assert sbs.main([*TINY, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err
    assert not out.exists()  # refused before any work
