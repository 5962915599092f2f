"""Compiled cached sampling (l2c.jobs.compile) on a diffusers transformer: FLUX's joint attention returns an
(image, text) pair, its children and the model itself are called by keyword, and its blocks come in two groups.
Traced with the `aot_eager` backend (Dynamo's tracing, guards and graph breaks as with inductor, without the C++
compile), against eager cached sampling through the same workload."""

import dataclasses
import functools

import pytest
import torch
from torch._dynamo.utils import counters

diffusers = pytest.importorskip("diffusers")

from test_workload import _workload  # noqa: E402

import l2c.jobs.generate as generate_module  # noqa: E402
from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.plan import COMPUTE, DROP, FORECAST1, FORECAST2, REUSE, CachePlan  # noqa: E402
from l2c.jobs.compile import CompiledCache  # noqa: E402
from l2c.jobs.generate import SampleConfig, generate  # noqa: E402


def _random_plan(steps: int, num_sublayers: int, actions, seed: int = 0) -> CachePlan:
    # Step 0 computes everything; later steps skip about half their sub-layers, each skipped cell taking one action.
    g = torch.Generator().manual_seed(seed)
    grid = torch.full((steps, num_sublayers), COMPUTE, dtype=torch.int8)
    for s in range(1, steps):
        skip = torch.rand(num_sublayers, generator=g) < 0.5
        pick = torch.tensor(actions, dtype=torch.int8)[torch.randint(len(actions), (num_sublayers,), generator=g)]
        grid[s] = torch.where(skip, pick, grid[s])
    return CachePlan.from_actions(grid)


def _compile_with_aot_eager(monkeypatch):
    monkeypatch.setattr(generate_module, "CompiledCache", functools.partial(CompiledCache, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()


@pytest.mark.parametrize("cfg", [1.0, 2.0], ids=["one-call", "true-cfg-two-calls"])
@pytest.mark.parametrize(
    "actions", [None, (REUSE,), (REUSE, FORECAST1, FORECAST2, DROP)], ids=["uncached", "reuse", "forecast-drop"]
)
def test_compiled_flux_sampling_equals_eager(monkeypatch, cfg, actions):
    workload = _workload(cfg)
    model = workload.model
    steps = workload.sampler.num_evaluations
    plan = None if actions is None else _random_plan(steps, len(sublayers(model)), actions)
    config = SampleConfig(sampler=workload.sampler.name, steps=workload.sampler.num_steps, guidance_scale=cfg)
    seeds, prompts = [4, 7, 1], [0, 2, 1]
    eager = generate(workload, None, seeds, prompts, config, plan, progress=False)
    plain = generate(workload, None, seeds, prompts, config, None, progress=False)
    if plan is not None:  # the plan changes the samples (it is not an all-compute plan in disguise)
        assert not torch.allclose(eager, plain, atol=1e-4)
    _compile_with_aot_eager(monkeypatch)
    compiled = generate(workload, None, seeds, prompts, dataclasses.replace(config, compile=True), plan, progress=False)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] > 0  # the blocks really ran as graphs
    assert not counters["graph_break"], dict(counters["graph_break"])
    # Detached: every child's forward and every block's call are the class's own again.
    assert all("forward" not in m.__dict__ for m in sublayers(model))
    assert all(b._compiled_call_impl is None for b in [*model.transformer_blocks, *model.single_transformer_blocks])
    assert torch.equal(generate(workload, None, seeds, prompts, config, None, progress=False), plain)
