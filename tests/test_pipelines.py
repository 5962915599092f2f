"""l2c.apply on real diffusers pipelines (tiny random transformers, precomputed prompt embeddings, latent output):
the evaluation comes from the scheduler's own steps and each call of it has its own cache, named after the
pipeline's cache_context, so a run is right with true CFG on or off, with a third call in some steps, and with two
transformers taking turns."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from test_layouts import _build  # noqa: E402

from l2c.cache.layout import describe, sublayers  # noqa: E402
from l2c.cache.plan import COMPUTE, REUSE, CachePlan  # noqa: E402
from l2c.integrations.diffusers import apply  # noqa: E402
from l2c.jobs.flux_sampling import flux_pipeline  # noqa: E402

STEPS = 5


def _reuse_plan(num_sublayers):
    actions = torch.full((STEPS, num_sublayers), REUSE, dtype=torch.int8)
    actions[0] = actions[3] = COMPUTE
    return CachePlan.from_actions(actions)


@pytest.fixture(scope="module")
def flux_pipe():
    transformer, _ = _build("flux")
    pipe = flux_pipeline(transformer, diffusers.FlowMatchEulerDiscreteScheduler())
    return pipe


def _flux_call(pipe, true_cfg: bool):
    g = torch.Generator().manual_seed(0)
    kw = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    if true_cfg:  # FluxPipeline calls the transformer twice per step only with a negative prompt and scale > 1
        kw.update(
            negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
            negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g),
            true_cfg_scale=3.0,
        )
    return pipe(
        **kw, height=32, width=32, num_inference_steps=STEPS, output_type="latent", generator=g.manual_seed(1)
    ).images


def _record_outputs(module):
    """What a sub-layer hands the block at each call (its output, computed or cached)."""
    seen = []
    return seen, module.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))


@pytest.mark.parametrize("true_cfg", [False, True])
def test_flux_all_compute_is_bit_identical_with_true_cfg_on_or_off(flux_pipe, true_cfg):
    plain = _flux_call(flux_pipe, true_cfg)
    with apply(flux_pipe, CachePlan.full(STEPS, len(sublayers(flux_pipe.transformer)))) as handle:
        assert torch.equal(_flux_call(flux_pipe, true_cfg), plain)
        assert handle.step == STEPS  # one evaluation per scheduler step, however many calls
    assert torch.equal(_flux_call(flux_pipe, true_cfg), plain)  # removed
    assert "step" not in flux_pipe.scheduler.__dict__ and "cache_context" not in flux_pipe.transformer.__dict__


def test_flux_true_cfg_calls_keep_separate_caches_named_by_the_pipeline(flux_pipe):
    first = describe(flux_pipe.transformer)[0].module  # transformer_blocks.0.attn: (image, text)
    seen, hook = _record_outputs(first)
    actions = _reuse_plan(len(sublayers(flux_pipe.transformer))).actions.clone()
    # The block's ff_context computes at every step, so the block is entered (no block shortcut) and its attention
    # child hands over its cached output where the hook sees it.
    actions[:, 2] = COMPUTE
    plan = CachePlan.from_actions(actions)
    try:
        with apply(flux_pipe, plan) as handle:
            _flux_call(flux_pipe, true_cfg=True)
            named = {slot for slot, _ in handle.engine._runner.signatures}
    finally:
        hook.remove()
    assert named == {"cond", "uncond"}
    assert len(seen) == 2 * STEPS  # cond, uncond at every step
    cond, uncond = seen[0::2], seen[1::2]
    assert not torch.equal(cond[0], uncond[0])
    for j in (1, 2):  # reused from step 0, each call from its own cache
        assert torch.equal(cond[j], cond[0]) and torch.equal(uncond[j], uncond[0])
    assert torch.equal(cond[4], cond[3]) and not torch.equal(cond[3], cond[0])  # step 3 computed afresh


def test_flux_without_negative_prompt_runs_the_same_plan_with_one_call(flux_pipe):
    with apply(flux_pipe, _reuse_plan(len(sublayers(flux_pipe.transformer)))) as handle:
        once = _flux_call(flux_pipe, true_cfg=False)
        assert {slot for slot, _ in handle.engine._runner.signatures} == {"cond"}
        assert torch.equal(_flux_call(flux_pipe, true_cfg=False), once)  # a new run starts clean


def test_wan22_two_experts_share_one_step_axis():
    high, _ = _build("wan")
    low, _ = _build("wan")
    with torch.no_grad():
        for p in low.parameters():
            p.mul_(0.5)
    pipe = diffusers.WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=high,
        transformer_2=low,
        boundary_ratio=0.6,
    )
    pipe.set_progress_bar_config(disable=True)

    def run():
        g = torch.Generator().manual_seed(0)
        return pipe(
            prompt_embeds=torch.randn(1, 12, 16, generator=g),
            negative_prompt_embeds=torch.randn(1, 12, 16, generator=g),
            height=32,
            width=32,
            num_frames=5,
            num_inference_steps=STEPS,
            guidance_scale=2.0,
            guidance_scale_2=2.0,
            output_type="latent",
            generator=g,
        ).frames

    plain = run()
    L = len(sublayers(high))
    with apply(pipe, CachePlan.full(STEPS, L)) as handle:
        assert len(handle.engines) == 2
        assert torch.equal(run(), plain)
    calls = {id(high): [], id(low): []}
    hooks = [m.register_forward_pre_hook(lambda m, a: calls[id(m)].append(1)) for m in (high, low)]
    try:
        with apply(pipe, _reuse_plan(L)) as handle:
            cached = run()
            steps = [e.step for e in handle.engines]
    finally:
        for h in hooks:
            h.remove()
    assert 0 < len(calls[id(high)]) < 2 * STEPS and len(calls[id(high)]) + len(calls[id(low)]) == 2 * STEPS
    assert steps[0] < steps[1] == STEPS - 1  # the second expert ran the late steps of the same axis
    assert cached.shape == plain.shape and not torch.equal(cached, plain)


def test_a_loop_that_never_steps_its_scheduler_is_refused(flux_pipe):
    transformer = flux_pipe.transformer
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    inputs = dict(
        hidden_states=torch.randn(1, 16, 4),
        encoder_hidden_states=torch.randn(1, 8, 32),
        pooled_projections=torch.randn(1, 32),
        img_ids=torch.randn(16, 3),
        txt_ids=torch.randn(8, 3),
        timestep=torch.tensor([1.0]),
    )
    with apply(transformer, CachePlan.full(STEPS, len(sublayers(transformer))), scheduler=scheduler):
        scheduler.set_timesteps(STEPS)
        with torch.no_grad(), pytest.raises(RuntimeError, match="without a scheduler step"):
            for _ in range(20):
                transformer(**inputs)


def test_sd3_skip_layer_guidance_adds_a_third_call_in_some_steps():
    """StableDiffusion3Pipeline with skip-layer guidance: one doubled-batch call per step, plus a batch-1 call that
    skips block 1 inside a window of steps. That call's cache starts where it first appears (computed there, not
    read from nothing), and an all-compute plan is bit-identical."""
    transformer, _ = _build("sd3")
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)

    def run():
        g = torch.Generator().manual_seed(0)
        return pipe(
            prompt_embeds=torch.randn(1, 6, 32, generator=g),
            pooled_prompt_embeds=torch.randn(1, 64, generator=g),
            negative_prompt_embeds=torch.randn(1, 6, 32, generator=g),
            negative_pooled_prompt_embeds=torch.randn(1, 64, generator=g),
            height=64,
            width=64,
            num_inference_steps=STEPS,
            guidance_scale=3.0,
            skip_guidance_layers=[1],
            skip_layer_guidance_start=0.2,
            skip_layer_guidance_stop=0.8,
            output_type="latent",
            generator=g,
        ).images

    batches = []
    hook = transformer.register_forward_pre_hook(
        lambda m, a, k: batches.append(k["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        plain = run()
        assert batches.count(1) >= 2 and len(batches) > STEPS  # the third call, in some steps only
        L = len(sublayers(transformer))
        with apply(pipe, CachePlan.full(STEPS, L)) as handle:
            assert torch.equal(run(), plain) and handle.step == STEPS
        with apply(pipe, _reuse_plan(L)) as handle:
            cached = run()
            slots = {slot for slot, _ in handle.engine._runner.signatures}
    finally:
        hook.remove()
    assert slots == {0, 1} and cached.shape == plain.shape and not torch.equal(cached, plain)
