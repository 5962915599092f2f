"""The denoising workload drives a diffusers transformer itself: a FLUX run through l2c's sampler equals
FluxPipeline's (true CFG on), and the schedule search's error runs on it, its resumed candidates bit-identical to
runs from the noise."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.plan import COMPUTE, FORECAST1, CachePlan  # noqa: E402
from l2c.jobs.flux_sampling import flux_pipeline  # noqa: E402
from l2c.jobs.workload import FluxWorkload  # noqa: E402
from l2c.sampling.flow_matching import DiffusersFlowMatchEuler  # noqa: E402
from l2c.training.schedule_search import TrajectoryError  # noqa: E402

STEPS, LATENT = 6, (4, 8, 8)  # 8 x 8 latent (4 channels) -> 16 packed tokens of 16 channels


def _prompts():
    g = torch.Generator().manual_seed(3)
    return dict(
        prompt_embeds=torch.randn(3, 8, 32, generator=g),
        pooled_prompt_embeds=torch.randn(3, 32, generator=g),
        negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
        negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g),
    )


def _workload(cfg=2.0):
    transformer = _packed_flux()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    sampler = DiffusersFlowMatchEuler(scheduler, STEPS, image_seq_len=16)
    return FluxWorkload(transformer, sampler, _prompts(), cfg, LATENT)


def _packed_flux():
    # FluxPipeline packs a C-channel latent into 4C-channel tokens: a 16-channel transformer for a 4-channel latent.
    from test_layouts import MODELS

    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(**{**MODELS["flux"][1], "in_channels": 16, "num_layers": 1}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def test_a_workload_run_equals_flux_pipeline():
    workload = _workload()
    seeds = [5, 9]
    with torch.no_grad():
        x = workload.noise(seeds)
        denoise, copies = workload.denoiser(torch.tensor([0, 2]))
        ours = workload.sampler.sample(denoise, x)
    pipe = flux_pipeline(workload.model, diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    p = _prompts()
    theirs = pipe(
        prompt_embeds=p["prompt_embeds"][[0, 2]],
        pooled_prompt_embeds=p["pooled_prompt_embeds"][[0, 2]],
        negative_prompt_embeds=p["negative_prompt_embeds"].expand(2, -1, -1),
        negative_pooled_prompt_embeds=p["negative_pooled_prompt_embeds"].expand(2, -1),
        true_cfg_scale=2.0,
        height=64,
        width=64,
        num_inference_steps=STEPS,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="latent",
    ).images
    assert copies == 1
    assert torch.equal(ours, theirs)


def test_the_search_error_runs_on_the_diffusers_transformer():
    workload = _workload()
    L = len(sublayers(workload.model))
    error = TrajectoryError(None, None, None, 3, seed=11, workload=workload, resume_every=1)
    fresh = TrajectoryError(None, None, None, 3, seed=11, workload=workload, resume_every=0)
    assert error(CachePlan.full(STEPS, L)) < -40  # the uncached run itself: zero error (clamped)
    kept = torch.full((STEPS, L), FORECAST1, dtype=torch.int8)
    kept[0] = kept[3] = COMPUTE
    error.adopt(CachePlan.from_actions(kept))
    late = kept.clone()
    late[4, :2] = COMPUTE  # differs from the kept plan at evaluation 4 only: resumed from a snapshot
    a, b = error(CachePlan.from_actions(late)), fresh(CachePlan.from_actions(late))
    assert a == b and a > -40
