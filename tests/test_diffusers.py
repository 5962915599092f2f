"""diffusers integration: learned caching on DiTPipeline / PixArt, DiT conversion both ways, plan interchange.

Everything is built from configs with random weights (no downloads): a tiny DiTTransformer2DModel inside a real
DiTPipeline with a tiny AutoencoderKL and DDIMScheduler, and a tiny PixArtTransformer2DModel driven by a hand-written
guidance loop (PixArtAlphaPipeline would need a T5 text encoder).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    PixArtTransformer2DModel,
)

from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cache.plan import CachePlan  # noqa: E402
from l2c.integrations.diffusers import (  # noqa: E402
    apply,
    diffusers_to_dit,
    dit_to_diffusers,
    export_diffusers,
    from_cache_dit_mask,
    from_smoothcache,
    load_diffusers_folder,
    to_cache_dit_mask,
    to_smoothcache,
)
from l2c.models import create_model  # noqa: E402
from l2c.router import Router  # noqa: E402

STEPS = 6
REUSE = [0, 3]  # sub-layers reused at the odd steps: block 0's attention, block 1's MLP (DiT: 2 per block)


def cached_plan(num_sublayers: int, reuse=REUSE) -> CachePlan:
    compute = torch.ones(STEPS, num_sublayers, dtype=torch.bool)
    for step in range(1, STEPS, 2):
        compute[step, reuse] = False
    return CachePlan(compute)


# --------------------------------------------------------------------------------------------- DiTPipeline
@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    # 1000 label embeddings: DiTPipeline hard-codes the null class 1000 for its doubled guidance batch.
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
    ).eval()
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
    ).eval()
    p = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())
    p.set_progress_bar_config(disable=True)
    return p


def run(p, steps=STEPS):
    gen = torch.Generator().manual_seed(0)
    return p(class_labels=[1, 2], guidance_scale=4.0, num_inference_steps=steps, generator=gen, output_type="pt").images


@pytest.fixture(scope="module")
def reference(pipe):
    return run(pipe)


def count_inner_calls(model):
    """Hooks on a child *inside* each sub-layer: they fire only when the sub-layer is really computed."""
    counts = [0] * len(sublayers(model))
    handles = []
    for index, module in enumerate(sublayers(model)):
        inner = module.to_out[0] if hasattr(module, "to_out") else module.net[2]

        def hook(mod, inp, out, index=index):
            counts[index] += 1

        handles.append(inner.register_forward_hook(hook))
    return counts, handles


def test_all_compute_plan_is_bit_identical(pipe, reference):
    with apply(pipe, CachePlan.full(STEPS, 4)):
        assert torch.equal(run(pipe), reference)


def test_skipped_sublayers_are_not_computed(pipe):
    plan = cached_plan(4)
    counts, handles = count_inner_calls(pipe.transformer)
    try:
        with apply(pipe, plan):
            run(pipe)
    finally:
        for h in handles:
            h.remove()
    # one transformer call per step (doubled guidance batch): computed exactly at the plan's True entries
    assert counts == plan.compute.sum(0).tolist() == [3, 6, 6, 3]


def test_cached_run_differs_and_repeats_exactly(pipe, reference):
    with apply(pipe, cached_plan(4)) as handle:
        first, second = run(pipe), run(pipe)
        assert handle.calls == STEPS
    assert torch.equal(first, second)  # each pipeline call starts from a clean cache
    assert not torch.allclose(first, reference)


def test_router_and_threshold(pipe):
    router = Router(STEPS, 4, cache_steps=[1, 3, 5])
    router.logits.data.fill_(3.0)
    router.logits.data[1::2, REUSE] = -3.0
    with apply(pipe, router, threshold=0.5) as handle:
        assert torch.equal(handle.plan.compute, cached_plan(4).compute)


def test_step_count_mismatch_fails_loudly(pipe):
    with apply(pipe, cached_plan(4)):
        with pytest.raises(ValueError, match="6 steps"):
            run(pipe, steps=STEPS + 2)


def test_replaced_scheduler_is_followed(pipe):
    with apply(pipe, cached_plan(4)):
        before = run(pipe)
        original = pipe.scheduler
        pipe.scheduler = DDIMScheduler.from_config(original.config)
        try:
            assert torch.equal(run(pipe), before) and torch.equal(run(pipe), before)
        finally:
            pipe.scheduler = original
    assert "set_timesteps" not in original.__dict__


def test_remove_restores_exactly(pipe, reference):
    transformer, scheduler = pipe.transformer, pipe.scheduler
    seen = []
    other = transformer.transformer_blocks[0].attn1.register_forward_hook(lambda m, i, o: seen.append(1))
    pre_hooks = list(transformer._forward_pre_hooks)
    handle = apply(pipe, cached_plan(4))
    late = transformer.register_forward_pre_hook(lambda m, a: None)  # a hook added while attached
    run(pipe)
    handle.remove()
    handle.remove()  # idempotent
    late.remove()
    try:
        assert not any("forward" in m.__dict__ for m in sublayers(transformer))
        assert "set_timesteps" not in scheduler.__dict__
        assert list(transformer._forward_pre_hooks) == pre_hooks
        apply(pipe, cached_plan(4)).remove()  # the engine no longer counts as attached
        seen.clear()
        assert torch.equal(run(pipe), reference)
        assert len(seen) == STEPS  # the other hook survived and still fires
    finally:
        other.remove()


def test_unsupported_models_fail_loudly(pipe):
    with pytest.raises(TypeError, match="unsupported transformer Linear"):
        apply(torch.nn.Linear(2, 2), CachePlan.full(2, 2))
    transformer = pipe.transformer
    with pytest.raises(ValueError, match="the model has 4"):
        apply(pipe, CachePlan.full(STEPS, 6))  # a plan for another model
    block = transformer.transformer_blocks[1]
    ff = block.ff
    block.ff = None
    try:
        with pytest.raises(ValueError, match="block 1 .* no sub-layer 'ff'"):
            apply(pipe, CachePlan.full(STEPS, 4))
    finally:
        block.ff = ff
    block.set_chunk_feed_forward(2, dim=1)  # what enable_forward_chunking does on the models that have it
    try:
        with pytest.raises(RuntimeError, match="block 1 uses feed-forward chunking"):
            apply(pipe, CachePlan.full(STEPS, 4))
    finally:
        block.set_chunk_feed_forward(None, dim=0)
    assert not any("forward" in m.__dict__ for m in sublayers(transformer))  # failed applies left nothing
    with apply(pipe, CachePlan.full(STEPS, 4)):
        with pytest.raises(RuntimeError, match="already attached"):
            apply(pipe, CachePlan.full(STEPS, 4))


def test_bare_transformer_counts_and_resets(pipe):
    transformer = pipe.transformer
    x = torch.randn(2, 4, 8, 8)
    t, y = torch.tensor([10, 10]), torch.tensor([1, 2])
    with apply(transformer, cached_plan(4)) as handle:
        for _ in range(2):
            handle.reset()  # no scheduler to start the run: the caller says when one begins
            for _ in range(STEPS):
                transformer(x, timestep=t, class_labels=y)
        with pytest.raises(RuntimeError, match="more model calls than the plan has steps"):
            transformer(x, timestep=t, class_labels=y)


# --------------------------------------------------------------------------------------------- PixArt
def tiny_pixart(num_layers: int, seed: int):
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        cross_attention_dim=16,
        caption_channels=12,
        sample_size=8,
        patch_size=2,
    ).eval()


@pytest.fixture(scope="module")
def pixart():
    return tiny_pixart(num_layers=2, seed=1)


def pixart_loop(transformer, scheduler, steps=STEPS):
    """PixArtAlphaPipeline's denoising loop in short: doubled guidance batch, learned-sigma output split."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    text = torch.randn(4, 5, 12, generator=gen)  # [conditional, unconditional] caption embeddings
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = transformer(
                torch.cat([latents] * 2),
                encoder_hidden_states=text,
                timestep=t.expand(4),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            ).sample[:, :4]
            cond, uncond = out.chunk(2)
            latents = scheduler.step(uncond + 4.5 * (cond - uncond), t, latents).prev_sample
    return latents


def test_pixart_cache(pixart):
    scheduler = DDIMScheduler()
    reference = pixart_loop(pixart, scheduler)
    assert len(sublayers(pixart)) == 6  # attn1, attn2, ff per block
    with apply(pixart, CachePlan.full(STEPS, 6), scheduler=scheduler):
        assert torch.equal(pixart_loop(pixart, scheduler), reference)
    plan = cached_plan(6, reuse=[1, 5])  # block 0's cross-attention, block 1's MLP
    counts, handles = count_inner_calls(pixart)
    try:
        with apply(pixart, plan, scheduler=scheduler):
            first, second = pixart_loop(pixart, scheduler), pixart_loop(pixart, scheduler)
    finally:
        for h in handles:
            h.remove()
    assert counts == (2 * plan.compute.sum(0)).tolist()  # two runs
    assert torch.equal(first, second) and not torch.allclose(first, reference)
    assert torch.equal(pixart_loop(pixart, scheduler), reference)  # removed


def test_pixart_with_an_odd_number_of_blocks():
    """3 sub-layers per block: an odd block count gives an odd sub-layer count, which plans accept."""
    one_block = tiny_pixart(num_layers=1, seed=4)
    scheduler = DDIMScheduler()
    reference = pixart_loop(one_block, scheduler)
    with apply(one_block, CachePlan.full(STEPS, 3), scheduler=scheduler):
        assert torch.equal(pixart_loop(one_block, scheduler), reference)
    with apply(one_block, cached_plan(3, reuse=[2]), scheduler=scheduler):
        assert not torch.allclose(pixart_loop(one_block, scheduler), reference)


# --------------------------------------------------------------------------------------------- conversion
@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(2)
    model = create_model("DiT-tiny")  # learn_sigma, 2 blocks, 10 classes; adaLN-Zero init would make it trivial
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.2)
    return model.eval()


def test_conversion_round_trip_is_bit_exact(dit):
    back = diffusers_to_dit(dit_to_diffusers(dit))
    ours, theirs = dit.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_converted_forward(dit):
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 9, 10])  # 10 = the null class
    t_zero, t = torch.zeros(4, dtype=torch.long), torch.tensor([1, 50, 500, 999])
    shifted, exact = dit_to_diffusers(dit), dit_to_diffusers(dit, exact_timestep_embedding=True)
    with torch.no_grad():
        # DiT's frequency spacing patched in: the same computation, which proves the parameter mapping.
        assert torch.equal(exact(x, timestep=t, class_labels=y).sample, dit(x, t, y))
        # At t = 0 both sinusoids are [1..1 | 0..0]: equal even with diffusers' shift ...
        assert torch.equal(shifted(x, timestep=t_zero, class_labels=y).sample, dit(x, t_zero, y))
        # ... and at t > 0 the only difference left is the frequency spacing 1/127 vs 1/128 (its size on the
        # trained dit-mnist is measured in docs/diffusers.md; these random weights amplify it arbitrarily).
        assert not torch.allclose(shifted(x, timestep=t, class_labels=y).sample, dit(x, t, y))


def test_export_and_load_folder(dit, tmp_path):
    out = tmp_path / "dit-tiny-diffusers"
    meta = {"preset": "DiT-tiny", "diffusion": {"schedule": "linear", "time_offset": 0, "num_timesteps": 1000}}
    export_diffusers(dit, out, meta)
    export_diffusers(dit, out, meta)  # replaces an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary folders left beside it
    assert json.loads((out / "l2c.json").read_text())["preset"] == "DiT-tiny"
    assert DDIMScheduler.from_pretrained(out).config.set_alpha_to_one
    model, loaded = load_diffusers_folder(out)
    assert {k: v for k, v in loaded["diffusion"].items() if k != "scheduler_config"} == meta["diffusion"]
    assert json.loads(loaded["diffusion"]["scheduler_config"])["_class_name"] == "DDIMScheduler"
    ours, theirs = dit.state_dict(), model.state_dict()
    # bit-exact, the position table included: diffusers recomputes it on load (a non-persistent buffer) with the
    # same float32 result as DiT's formula
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    transformer, _ = load_diffusers_folder(out, as_dit=False)
    assert isinstance(transformer, DiTTransformer2DModel)


def test_diffusers_only_models_are_refused():
    gelu = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        num_layers=1,
        sample_size=8,
        activation_fn="gelu",
        num_embeds_ada_norm=10,
    )
    with pytest.raises(ValueError, match="activation_fn 'gelu'"):
        diffusers_to_dit(gelu)


# --------------------------------------------------------------------------------------------- interchange
def test_smoothcache_round_trip():
    plan = cached_plan(4)
    schedule = to_smoothcache(plan, ("attn1", "ff"))
    assert schedule["attn1-0"] == [1, 0, 1, 0, 1, 0] and schedule["ff-0"] == [1] * STEPS
    assert torch.equal(from_smoothcache(schedule, 2, ("attn1", "ff")).compute, plan.compute)
    shared = CachePlan(cached_plan(4, reuse=[0, 2]).compute)  # attention reused in both blocks
    assert to_smoothcache(shared, ("attn", "mlp"), shared=True) == {"attn": [1, 0, 1, 0, 1, 0], "mlp": [1] * STEPS}
    with pytest.raises(ValueError, match="same schedule in every block"):
        to_smoothcache(plan, shared=True)
    with pytest.raises(ValueError, match="attn-7"):
        from_smoothcache({"attn-7": [1, 0]}, 2)
    # SmoothCache computes whatever step 0 says (nothing is cached yet); unlisted components always run
    imported = from_smoothcache({"attn": [0, 0, 1]}, 2)
    assert imported.compute.tolist() == [[True] * 4, [False, True, False, True], [True] * 4]


def test_cache_dit_mask():
    step_level = from_cache_dit_mask([1, 0, 1, 1, 0, 0], 4)
    assert step_level.compute[:, 0].tolist() == [True, False, True, True, False, False]
    assert to_cache_dit_mask(step_level) == [1, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="step-level"):
        to_cache_dit_mask(cached_plan(4))
    assert to_cache_dit_mask(cached_plan(4), partial="compute") == [1] * STEPS
    assert to_cache_dit_mask(cached_plan(4), partial="cache") == [1, 0, 1, 0, 1, 0]


def test_cache_dit_accepts_the_mask():
    cache_dit = pytest.importorskip("cache_dit")
    mask = to_cache_dit_mask(from_cache_dit_mask([1, 1, 0, 1, 0, 1], 4))
    config = cache_dit.DBCacheConfig(num_inference_steps=6, steps_computation_mask=mask)
    assert list(config.steps_computation_mask) == mask


def test_cli_export_diffusers_round_trip(tmp_path):
    """`l2c export-diffusers` writes a folder diffusers loads, and converting it back gives the bundled weights."""
    from l2c.cli import main
    from l2c.integrations.diffusers_convert import load_diffusers_folder
    from l2c.models.checkpoints import load_model

    out = tmp_path / "dit-mnist-diffusers"
    assert main(["export-diffusers", "--model", "dit-mnist", "--out", str(out)]) == 0
    loaded = load_diffusers_folder(out)
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    ours, _ = load_model("dit-mnist")
    for key, value in ours.state_dict().items():
        if key == "pos_embed":  # the fixed sin-cos table: stored in float16 in the bundled file, rebuilt by diffusers
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-3)
        else:
            assert torch.equal(model.state_dict()[key], value), key
    assert main(["export-diffusers", "--model", "uvit-mnist", "--out", str(tmp_path / "x")]) == 2
