"""The sampler objects: one class per sampler, `sample` is the loop over `step`, and router training takes its
solver step through the same `step` as sampling."""

from __future__ import annotations

import pytest
import torch

from l2c.cache.engine import CacheEngine
from l2c.cli import build_parser
from l2c.models import create_model
from l2c.router import Router
from l2c.sampling import SAMPLERS, StackedRandomGenerator, make_sampler
from l2c.sampling.diffusion import default_spec
from l2c.training.train_router import RouterTrainConfig, router_step_loss


def toy_denoise(x, t, j):  # a smooth stand-in for a model, with 2C outputs (ε and variance values)
    eps = torch.sin(x + 0.001 * t.double().view(-1, 1, 1, 1))
    return torch.cat([eps, torch.tanh(x)], dim=1)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sample_is_the_loop_over_step(name):
    eta = 0.0 if name.startswith("diffusers") else 0.3  # diffusers schedulers run their deterministic update
    sampler = make_sampler(name, 6, default_spec("uvit" if name.startswith("dpm") else "dit"), eta=eta)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    noise_a, noise_b = StackedRandomGenerator([1, 2, 3]), StackedRandomGenerator([1, 2, 3])
    # a velocity model (flow matching) returns the state's shape; the ε models' extra variance channels go
    denoise = toy_denoise if "flowmatch" not in name else (lambda x, t, j: toy_denoise(x, t, j)[:, : x.shape[1]])
    seen = []
    whole = sampler.sample(lambda x, t, j: (seen.append(j), denoise(x, t, j))[1], x, noise_a.randn_like)
    assert seen == list(range(sampler.num_evaluations))  # evaluation indices in sampling order, each once
    history, stepped = {}, x
    for i in range(sampler.num_steps):
        stepped = sampler.step(denoise, stepped, i, history, noise_b.randn_like)
    assert torch.equal(whole, stepped)


def test_evaluation_counts_and_model_times():
    spec = default_spec("uvit")
    assert make_sampler("dpm-solver-2", 20, spec).num_evaluations == 20
    assert make_sampler("dpm-solver-2", 20, spec).num_steps == 10
    assert make_sampler("dpm-solver-2m", 20, spec).num_evaluations == 20
    ddim = make_sampler("ddim", 20, default_spec("dit"))
    assert ddim.model_time(0, 1).item() == 999 and ddim.model_time(19, 1).item() == 0
    with pytest.raises(ValueError, match="even NFE"):
        make_sampler("dpm-solver-2", 7, spec)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler", 7, spec)


def test_cli_sampler_choices_come_from_the_table():
    parser = build_parser()
    for name in SAMPLERS:
        assert parser.parse_args(["sample", "--sampler", name]).sampler == name


@pytest.mark.parametrize(
    "name,m",
    [
        ("ddim", 3),
        ("dpm-solver-2", 4),
        ("ddpm", 3),
        ("dpm-solver-2m", 3),
        ("diffusers-ddim", 3),
        ("diffusers-dpmpp-2m", 3),
    ],
)
def test_router_training_steps_with_the_sampling_step(name, m):
    """The solver step into cache evaluation m is the sampler's `step`, it evaluates the model only at the
    evaluations before m (so the cache holds m − 1's outputs: a multistep solver once also evaluated m itself inside
    that step, which made every caching error zero), and it lands where sampling's step does."""
    arch = "uvit" if name.startswith("dpm") else "dit"
    torch.manual_seed(0)
    model = create_model("U-ViT-tiny" if arch == "uvit" else "DiT-tiny").double().eval().requires_grad_(False)
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    sampler = make_sampler(name, 6, default_spec(arch))
    calls, original = [], sampler.step

    evaluated = []

    def spy(denoise, x, i, history, randn_like=None):
        out = original(lambda x, t, j: (evaluated.append(j), denoise(x, t, j))[1], x, i, history, randn_like)
        calls.append((i, x.clone(), out.clone()))
        return out

    sampler.step = spy
    router = Router(6, 2 * len(model.blocks), [m]).double()
    engine = CacheEngine(model)
    x0, y = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([1, 2])
    noise = torch.randn_like(x0)
    draw = lambda x: torch.zeros_like(x)  # noqa: E731  (any fixed noise: the same for both paths)
    try:
        router_step_loss(model, engine, router, sampler, x0, y, m, noise, RouterTrainConfig(), draw)
    finally:
        engine.detach()
    assert len(calls) == 1
    i, x_s, x_m = calls[0]
    assert i == sampler.step_into(m)
    assert evaluated == list(range(m - sampler.evaluations_per_step, m))
    sampler.step = original
    again = sampler.step(lambda x, t, j: model(x, t, y), x_s, i, {}, draw)
    assert torch.equal(again, x_m)
