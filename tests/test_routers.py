"""Router files: the four official routers reproduce the spec's §5 counts and Table 1 MACs; our format round-trips."""

import json
import os

import pytest
import torch
from conftest import official_routers_dir

from l2c.cache.macs import profile_macs
from l2c.cli import main
from l2c.router import Router, import_official, load_router, save_router
from l2c.router.report import router_summary

needs_official = pytest.mark.skipif(official_routers_dir() is None, reason="set L2C_OFFICIAL_ROUTERS to run")

# Spec §5: executed sub-layers per cache step, in sampling order.
DIT20 = [0, 0, 4, 8, 26, 53, 55, 55, 55, 56]
DIT50 = [0, 1, 0, 0, 3, 1, 2, 6, 7, 8, 11, 26, 29, 36, 54, 54, 55, 55, 55, 55, 56, 55, 55, 56, 56]
UVIT20 = [0, 2, 6, 6, 8, 16, 49, 52, 50]
UVIT50 = [0] * 9 + [1, 1, 2, 2, 4, 4, 4, 3, 2, 2, 6, 8, 11, 15, 23]


@needs_official
@pytest.mark.parametrize(
    "name,arch,steps,theta,per_step,totals,macs_t",
    [
        ("DDIM20_router.pt", "dit", 20, 0.1, DIT20, (312, 560, 157, 155), 1.78),
        ("DDIM50_router.pt", "dit", 50, 0.1, DIT50, (736, 1400, 371, 365), 4.36),
        ("dpm20_router.pth", "uvit", 20, 0.9, UVIT20, (189, 522, 103, 86), None),
        ("dpm50_router.pth", "uvit", 50, 0.9, UVIT50, (88, 1392, 47, 41), None),
    ],
)
def test_official_router_counts(name, arch, steps, theta, per_step, totals, macs_t):
    router, meta = import_official(os.path.join(official_routers_dir(), name), arch, steps)
    macs = profile_macs("DiT-XL/2" if arch == "dit" else "U-ViT-H/2")
    s = router_summary(router, theta, macs)
    assert s["per_step"] == per_step
    assert (s["executed"], s["total"], s["executed_attn"], s["executed_mlp"]) == totals
    if macs_t is not None:  # spec Table 1: DDIM full 2.29 / 5.72 T, L2C 1.78 / 4.36 T (paper convention)
        assert round(s["macs_per_image_plan_linear"] / 1e12, 2) == macs_t
        assert round(s["macs_per_image_uncached_linear"] / 1e12, 2) == {20: 2.29, 50: 5.72}[steps]


@needs_official
def test_official_dit_steps_map_to_sampling_order():
    """Official router k (k = 0 least noisy) drives our evaluation j = N - 1 - k."""
    path = os.path.join(official_routers_dir(), "DDIM20_router.pt")
    router, _ = import_official(path, "dit", 20)
    raw = torch.load(path, map_location="cpu", weights_only=False)["routers"]
    assert torch.equal(router.logits[19 - 14], raw["14.prob"].cpu())
    executed = router.to_plan(0.1).compute[19 - 14].nonzero().flatten().tolist()
    assert executed == [4, 7, 54, 55]  # docs/upstream.md §5: idx14 {4, 7, 54, 55}


@needs_official
def test_official_import_rejects_wrong_steps_and_arch():
    d = official_routers_dir()
    with pytest.raises(ValueError, match="holds 20 routers"):
        import_official(os.path.join(d, "DDIM20_router.pt"), "dit", 50)
    with pytest.raises(ValueError, match="--arch uvit"):
        import_official(os.path.join(d, "dpm20_router.pth"), "dit", 20)
    with pytest.raises(ValueError, match="--arch dit"):
        import_official(os.path.join(d, "DDIM20_router.pt"), "uvit", 20)


@needs_official
def test_cli_router_import_and_show_json(tmp_path, capsys):
    out = tmp_path / "r.safetensors"
    assert (
        main(
            [
                "router",
                "import",
                os.path.join(official_routers_dir(), "DDIM20_router.pt"),
                "--arch",
                "dit",
                "--steps",
                "20",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "router",
                "show",
                str(out),
                "--threshold",
                "0.1",
                "--model",
                "DiT-XL/2",
                "--json",
                "--png",
                str(tmp_path / "r.png"),
            ]
        )
        == 0
    )
    s = json.loads(capsys.readouterr().out)
    assert (s["executed"], s["total"], s["executed_attn"], s["executed_mlp"]) == (312, 560, 157, 155)
    assert s["per_step"] == DIT20
    assert (
        round(s["macs_per_image_plan_linear"] / 1e12, 2) == 1.78
        and round(s["macs_per_image_uncached_linear"] / 1e12, 2) == 2.29
    )
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert main(["router", "show", str(out), "--model", "U-ViT-H/2", "--json"]) == 2  # 56 vs 58 sub-layers


def test_router_file_round_trip_and_errors(tmp_path):
    router = Router(6, 4, [1, 3, 5])
    path = tmp_path / "r.safetensors"
    save_router(router, path, {"model": "DiT-tiny", "steps": 6, "sampler": "ddim", "threshold": 0.5})
    loaded, meta = load_router(path)
    assert torch.equal(loaded.logits, router.logits) and loaded.cache_steps == [1, 3, 5]
    assert meta["model"] == "DiT-tiny" and meta["version"] == 1
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_router(tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError):
        load_router(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="router import"):
        load_router(tmp_path / "official.pt") if (tmp_path / "official.pt").write_bytes(b"x") else None
    nan = Router(6, 4, [1])
    nan.logits.data[1, 0] = float("nan")
    save_router(nan, tmp_path / "nan.safetensors", {})
    with pytest.raises(ValueError, match="NaN"):
        load_router(tmp_path / "nan.safetensors")
