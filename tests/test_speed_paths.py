"""Compiled cached sampling (l2c.jobs.compile) and half precision (l2c.utils.precision), on a CPU.

Graph counting and eager parity run with the `aot_eager` backend: Dynamo traces, guards and recompiles exactly as
with inductor, without the C++ compile; one test runs inductor itself on the tiny DiT.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import pytest
import torch
from torch._dynamo.utils import counters

import l2c.jobs.generate as generate_module
from l2c.cache.engine import CacheEngine
from l2c.cache.layout import layout_for, sublayers
from l2c.cache.plan import COMPUTE, DROP, FORECAST1, FORECAST2, REUSE, CachePlan, cache_steps_for
from l2c.cli import main
from l2c.jobs.compile import CompiledCache
from l2c.jobs.generate import SampleConfig, generate
from l2c.models import create_model
from l2c.models.checkpoints import load_model
from l2c.router.router import Router
from l2c.sampling.diffusion import DiffusionSpec, default_spec
from l2c.sampling.samplers import make_sampler
from l2c.training.train_router import RouterTrainConfig, train_router
from l2c.utils.precision import precision_scope

CASES = {"dit": ("DiT-tiny", "ddim", "alternate"), "uvit": ("U-ViT-tiny", "dpm-solver-2", "shifted")}


def _tiny(arch: str):
    torch.manual_seed(0)
    model = create_model(CASES[arch][0]).eval().requires_grad_(False)
    return model, default_spec(arch)


def _random_plan(arch: str, steps: int, num_sublayers: int, seed: int = 0, actions=(REUSE,)) -> CachePlan:
    # Cache steps skip ~half their sub-layers at random, each skipped cell taking one of `actions`.
    g = torch.Generator().manual_seed(seed)
    grid = torch.full((steps, num_sublayers), COMPUTE, dtype=torch.int8)
    for s in cache_steps_for(CASES[arch][2], steps):
        skip = torch.rand(num_sublayers, generator=g) < 0.5
        pick = torch.randint(len(actions), (num_sublayers,), generator=g)
        grid[s] = torch.where(skip, torch.tensor(actions, dtype=torch.int8)[pick], grid[s])
    return CachePlan.from_actions(grid)


def _expected_graphs(model, plan: CachePlan, uvit: bool) -> int:
    """Distinct (block kind, attention pattern, MLP pattern) over the plan: what CompiledCache compiles."""
    keep, (orders, _) = plan.keep().tolist(), plan.forecast_orders()
    blocks = layout_for(model).blocks(model)
    seen = set()
    for step, row in enumerate(plan.actions.tolist()):
        for b, block in enumerate(blocks):
            kind = getattr(block, "skip_linear", None) is not None if uvit else 0
            cells = [2 * b + k for k in (0, 1)]
            seen.add((kind, *(_pattern(row[i], keep[step][i], int(orders[step, i])) for i in cells)))
    return len(seen)


def _pattern(action: int, keep: bool, order: int) -> str:
    # A forecast is summed inside the graph at the order its history holds (order 0: the stored output itself).
    if action == COMPUTE:
        return "keep" if keep else "compute"
    if action == DROP:
        return "zero"
    return "given" if action == REUSE or order == 0 else f"forecast{order}"


def _aot_eager(monkeypatch):
    monkeypatch.setattr(generate_module, "CompiledCache", functools.partial(CompiledCache, backend="aot_eager"))
    torch._dynamo.reset()  # graphs of earlier tests share the code object: start from an empty cache
    counters.clear()


@pytest.mark.parametrize(
    "arch, actions",
    [("dit", (REUSE, FORECAST1, FORECAST2, DROP)), ("uvit", (REUSE,))],
    ids=["dit-forecast-drop", "uvit-reuse"],
)
def test_compiled_cached_sampling_equals_eager_with_one_graph_per_block_pattern(monkeypatch, arch, actions):
    model, spec = _tiny(arch)
    config = SampleConfig(sampler=CASES[arch][1], steps=8, guidance_scale=1.5, batch_size=4)
    plan = _random_plan(arch, config.make_sampler(spec).num_evaluations, len(sublayers(model)), actions=actions)
    seeds, classes = list(range(4)), [1, 2, 3, 4]
    eager = generate(model, spec, seeds, classes, config, plan, progress=False)
    _aot_eager(monkeypatch)
    compiled_config = dataclasses.replace(config, compile=True)
    compiled = generate(model, spec, seeds, classes, compiled_config, plan, progress=False)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    assert not counters["graph_break"], dict(counters["graph_break"])
    # One graph per distinct (block kind, sub-layer pattern), at most 6 x 6 per kind: not one per step or row.
    assert graphs == _expected_graphs(model, plan, arch == "uvit") <= 36 * (2 if arch == "uvit" else 1)
    again = generate(model, spec, seeds, classes, compiled_config, plan, progress=False)  # a fresh attach
    assert counters["stats"]["unique_graphs"] == graphs, "a second run (new CompiledCache) recompiled"
    torch.testing.assert_close(again, compiled, rtol=0, atol=0)
    assert "forward" not in model.blocks[0].attn.__dict__ and model.blocks[0]._compiled_call_impl is None


def test_whole_model_compile_with_the_engine_recompiles_every_step():
    """Why CompiledCache compiles blocks: Dynamo guards the engine's step number (documented in l2c.jobs.compile)."""
    model, _ = _tiny("dit")
    plan = CachePlan(torch.ones(5, 4, dtype=torch.bool))
    torch._dynamo.reset()
    counters.clear()
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with CacheEngine(model, plan) as engine:
        compiled = torch.compile(model, backend="eager")
        for step in range(5):
            engine.begin_step(step)
            compiled(x, torch.full((2,), 900 - 100 * step), y)
    assert counters["stats"]["unique_graphs"] == 5  # identical rows, still one graph per step


def test_inductor_compiled_sampling_equals_eager():
    torch._dynamo.reset()
    model, spec = _tiny("dit")
    config = SampleConfig(sampler="ddim", steps=4, guidance_scale=1.5, batch_size=2)
    plan = CachePlan(torch.tensor([[True] * 4, [False] * 4, [True] * 4, [False] * 4]))  # two block patterns
    eager = generate(model, spec, [0, 1], [3, 4], config, plan, progress=False)
    compiled = generate(model, spec, [0, 1], [3, 4], dataclasses.replace(config, compile=True), plan, progress=False)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_compiled_cache_refuses_an_attached_engine():
    model, _ = _tiny("dit")
    with CacheEngine(model):
        with pytest.raises(RuntimeError, match="already wrapped"):
            CompiledCache(model, backend="eager")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / (a - b).square().mean()))  # images in [-1, 1]: peak-to-peak 2


@pytest.mark.parametrize("name", ["dit-mnist", "uvit-mnist"])
def test_bf16_cached_sampling_stays_close_to_fp32(name):
    """bf16 autocast, cached (a random plan over the cache steps), 8 seeds, 10 steps / NFE 10: PSNR > 30 dB against
    the fp32 images of the same plan (measured 44.8 dB dit-mnist, 48.1 dB uvit-mnist)."""
    model, meta = load_model(name)
    spec = DiffusionSpec(**meta["diffusion"])
    arch = "dit" if name.startswith("dit") else "uvit"
    config = SampleConfig(sampler=CASES[arch][1], steps=10, guidance_scale=1.5, batch_size=8)
    plan = _random_plan(arch, config.make_sampler(spec).num_evaluations, len(sublayers(model)))
    seeds, classes = list(range(8)), list(range(8))
    fp32 = generate(model, spec, seeds, classes, config, plan, progress=False)
    bf16 = generate(model, spec, seeds, classes, dataclasses.replace(config, dtype="bf16"), plan, progress=False)
    assert not torch.equal(bf16, fp32)  # autocast really ran in bf16
    assert _psnr(bf16, fp32) > 30.0


def test_precision_scope_autocasts_returns_float32_and_restores():
    model, _ = _tiny("dit")
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 20]), torch.tensor([1, 2])
    with precision_scope(model, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert model(x, t, y).dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu") and not model._forward_hooks
    with precision_scope(model, "fp32"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_router_training_in_half_precision(precision):
    model, spec = _tiny("dit")
    sampler = make_sampler("ddim", 4, spec)
    router = Router(4, 4, cache_steps_for("alternate", 4), generator=torch.Generator().manual_seed(0))
    before = router.logits.detach().clone()

    def batch(gen, n):
        return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(10, (n,), generator=gen)

    cfg = RouterTrainConfig(iterations=3, batch_size=4, lr=0.1, lam=1e-3, precision=precision)
    history = train_router(model, router, sampler, batch, cfg)
    assert all(torch.isfinite(torch.tensor(history["loss"])))
    assert not torch.equal(router.logits.detach(), before)
    with pytest.raises(ValueError, match="unknown precision"):
        RouterTrainConfig(precision="fp8")


def test_cli_sample_dtype(tmp_path, capsys):
    args = ["sample", "--model", "DiT-tiny", "--random-init", "--steps", "2", "--seeds", "0-1"]
    assert main([*args, "--dtype", "bf16", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").exists()
    assert main([*args, "--dtype", "fp8"]) == 2


def test_inductor_fuses_forecast_gate_and_residual_into_one_pass():
    """A block whose two sub-layers are both forecast (order 2) compiles to one pass over the stored tensors:
    f0 + c1·F1 + c2·F2 of both sub-layers, their gates and both residual adds in a single generated kernel, with no
    intermediate buffer of the activations' size (eager sampling makes one pass per operation)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    model, spec = _tiny("dit")
    config = SampleConfig(sampler="ddim", steps=5, guidance_scale=1.0, batch_size=2, compile=True)
    L = len(sublayers(model))
    actions = torch.full((5, L), COMPUTE, dtype=torch.int8)
    actions[3:] = FORECAST2  # three computed evaluations give every sub-layer its order-2 history
    plan = CachePlan.from_actions(actions)
    _, sources = run_and_get_code(generate, model, spec, [0, 1], [3, 4], config, plan, progress=False)
    # The graph of the forecast pattern: the only one without the attention's and MLP's matrix products.
    forecast = [code for code in sources if "bmm" not in code and code.count("extern_kernels.addmm") <= 1]
    assert len(forecast) == 1, [code.count("addmm") for code in sources]
    code = forecast[0]
    tokens, width = model.pos_embed.shape[1], model.pos_embed.shape[2]
    activation = f"(2, {tokens}, {width})"
    allocations = code.count(f"empty_strided_cpu({activation}")
    assert allocations == 1, f"{allocations} buffers of the activation's size (the block's output only)"
    # Two kernels: the adaLN input (SiLU of the conditioning, before its Linear) and one over the activations.
    kernels = set(re.findall(r"cpp_fused_\w+", code))
    fused = [k for k in kernels if "silu" not in k]
    assert len(kernels) == 2 and len(fused) == 1, kernels
    call = re.search(fused[0] + r"\(([^)]*)\)", code[code.index("def call") :]).group(1).split(", ")
    # It reads the block input, the adaLN output (the gates) and f0, F1, F2 of both sub-layers, and writes the output.
    assert len([a for a in call if a.startswith("arg")]) >= 1 + 2 * 3, call
