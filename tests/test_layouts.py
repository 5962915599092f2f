"""The general sub-layer layout on today's diffusers transformers, each built from a tiny random config (diffusers'
own test configs) in the test: an all-compute plan is bit-identical to the plain model, reuse / forecast really skip
(no Linear inside the sub-layer or its skippable inputs runs), every action runs with the output structure kept, a
reuse equals the plain model with that output substituted, and detaching restores the model exactly."""

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

from l2c.cache import CacheEngine  # noqa: E402
from l2c.cache.layout import describe, sublayers  # noqa: E402
from l2c.cache.plan import COMPUTE, DROP, FORECAST1, FORECAST2, REUSE, CachePlan  # noqa: E402


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _flux_inputs(t):
    return dict(
        hidden_states=_randn(1, 16, 4),
        encoder_hidden_states=_randn(1, 8, 32, seed=1),
        pooled_projections=_randn(1, 32, seed=2),
        img_ids=_randn(16, 3, seed=3),
        txt_ids=_randn(8, 3, seed=4),
        timestep=torch.tensor([t]),
    )


def _flux2_inputs(t):
    return dict(
        hidden_states=_randn(1, 16, 4),
        encoder_hidden_states=_randn(1, 8, 16, seed=1),
        timestep=torch.tensor([t]),
        img_ids=_randn(1, 16, 4, seed=3),
        txt_ids=_randn(1, 8, 4, seed=4),
        guidance=torch.tensor([3.5]),
    )


def _sd3_inputs(t):
    return dict(
        hidden_states=_randn(1, 4, 8, 8),
        encoder_hidden_states=_randn(1, 6, 32, seed=1),
        pooled_projections=_randn(1, 64, seed=2),
        timestep=torch.tensor([t * 1000]),
    )


def _wan_inputs(t):
    return dict(
        hidden_states=_randn(1, 4, 2, 16, 16),
        encoder_hidden_states=_randn(1, 12, 16, seed=1),
        timestep=torch.tensor([t * 1000]),
    )


def _qwen_inputs(t):
    return dict(
        hidden_states=_randn(1, 16, 16),
        encoder_hidden_states=_randn(1, 8, 16, seed=1),
        encoder_hidden_states_mask=torch.ones(1, 8),
        timestep=torch.tensor([t]),
        img_shapes=[(1, 4, 4)],
    )


def _hunyuan_inputs(t):
    return dict(
        hidden_states=_randn(1, 4, 1, 8, 8),
        timestep=torch.tensor([t * 1000]),
        encoder_hidden_states=_randn(1, 6, 16, seed=1),
        encoder_attention_mask=torch.ones(1, 6),
        pooled_projections=_randn(1, 8, seed=2),
        guidance=torch.tensor([6000.0]),
    )


def _ltx_inputs(t):
    return dict(
        hidden_states=_randn(1, 32, 4),
        encoder_hidden_states=_randn(1, 6, 16, seed=1),
        timestep=torch.tensor([t * 1000]),
        encoder_attention_mask=torch.ones(1, 6),
        num_frames=2,
        height=4,
        width=4,
    )


def _sana_inputs(t):
    return dict(
        hidden_states=_randn(1, 4, 8, 8),
        encoder_hidden_states=_randn(1, 6, 8, seed=1),
        timestep=torch.tensor([t * 1000]),
    )


def _pixart_inputs(t):
    return dict(
        hidden_states=_randn(1, 4, 8, 8),
        encoder_hidden_states=_randn(1, 6, 8, seed=1),
        timestep=torch.tensor([t * 1000]),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


def _cogvideox_inputs(t):
    return dict(
        hidden_states=_randn(1, 2, 4, 8, 8),
        encoder_hidden_states=_randn(1, 8, 8, seed=1),
        timestep=torch.tensor([t * 1000]),
    )


def _zimage_inputs(t):
    return dict(x=[_randn(16, 1, 16, 16)], cap_feats=[_randn(16, 16, seed=1)], t=torch.tensor([t]))


def _dit_inputs(t):
    return dict(hidden_states=_randn(1, 4, 8, 8), timestep=torch.tensor([int(t * 999)]), class_labels=torch.tensor([3]))


_SD3 = dict(
    sample_size=8,
    patch_size=1,
    in_channels=4,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=4,
    caption_projection_dim=32,
    joint_attention_dim=32,
    pooled_projection_dim=64,
    out_channels=4,
    pos_embed_max_size=96,
    dual_attention_layers=(),
    qk_norm=None,
)

# class name, its tiny config (diffusers' tests), inputs at time t in (0, 1]
MODELS = {
    "flux": (
        "FluxTransformer2DModel",
        dict(
            patch_size=1,
            in_channels=4,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=[4, 4, 8],
        ),
        _flux_inputs,
    ),
    "flux2": (
        "Flux2Transformer2DModel",
        dict(
            patch_size=1,
            in_channels=4,
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            timestep_guidance_channels=16,
            axes_dims_rope=(4, 4, 4, 4),
        ),
        _flux2_inputs,
    ),
    "sd3": ("SD3Transformer2DModel", _SD3, _sd3_inputs),
    "sd3.5": ("SD3Transformer2DModel", {**_SD3, "dual_attention_layers": (0,), "qk_norm": "rms_norm"}, _sd3_inputs),
    "wan": (
        "WanTransformer3DModel",
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ),
        _wan_inputs,
    ),
    "qwen-image": (
        "QwenImageTransformer2DModel",
        dict(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=4,
            joint_attention_dim=16,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
        ),
        _qwen_inputs,
    ),
    "hunyuan-video": (
        "HunyuanVideoTransformer3DModel",
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=1,
            num_single_layers=2,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=1,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(2, 2, 4),
        ),
        _hunyuan_inputs,
    ),
    "ltx": (
        "LTXVideoTransformer3DModel",
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            cross_attention_dim=16,
            num_layers=2,
            caption_channels=16,
        ),
        _ltx_inputs,
    ),
    "sana": (
        "SanaTransformer2DModel",
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=4,
            num_layers=2,
            num_cross_attention_heads=2,
            cross_attention_head_dim=4,
            cross_attention_dim=8,
            caption_channels=8,
            sample_size=8,
            patch_size=1,
        ),
        _sana_inputs,
    ),
    "pixart": (
        "PixArtTransformer2DModel",
        dict(
            num_attention_heads=2,
            attention_head_dim=4,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            cross_attention_dim=8,
            sample_size=8,
            patch_size=2,
            caption_channels=8,
        ),
        _pixart_inputs,
    ),
    "cogvideox": (
        "CogVideoXTransformer3DModel",
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            time_embed_dim=2,
            text_embed_dim=8,
            num_layers=2,
            sample_width=8,
            sample_height=8,
            sample_frames=8,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=8,
        ),
        _cogvideox_inputs,
    ),
    "z-image": (
        "ZImageTransformer2DModel",
        dict(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=16,
            dim=16,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=1,
            n_kv_heads=2,
            qk_norm=True,
            cap_feat_dim=16,
            rope_theta=256.0,
            t_scale=1000.0,
            axes_dims=[8, 4, 4],
            axes_lens=[256, 32, 32],
        ),
        _zimage_inputs,
    ),
    "dit": (
        "DiTTransformer2DModel",
        dict(
            in_channels=4,
            out_channels=8,
            num_layers=2,
            num_attention_heads=2,
            attention_head_dim=8,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=10,
            norm_type="ada_norm_zero",
        ),
        _dit_inputs,
    ),
}

TIMES = [1.0, 0.8, 0.6, 0.45, 0.3, 0.2]  # one model evaluation per entry


def _build(name):
    cls_name, config, inputs = MODELS[name]
    torch.manual_seed(0)
    model = getattr(diffusers, cls_name)(**config).eval()
    with torch.no_grad():  # random non-zero weights everywhere (zero-initialised gates would hide every sub-layer)
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model, inputs


def _output(model, inputs):
    out = model(**inputs, return_dict=False)[0]
    return torch.cat([o.flatten() for o in out]) if isinstance(out, list) else out


def _run(model, inputs, plan=None):
    outs = []
    with torch.no_grad():
        if plan is None:
            return [_output(model, inputs(t)) for t in TIMES]
        with CacheEngine(model, plan) as engine:
            for j, t in enumerate(TIMES):
                engine.begin_step(j)
                outs.append(_output(model, inputs(t)))
    return outs


def _count_layer_calls(monkeypatch, modules):
    """Count the computations (the class forward actually running) of every Linear / Conv inside `modules`. A
    module hook would not do: it fires in __call__ even when the engine's dispatcher returns without computing."""
    inside = {id(m) for module in modules for m in module.modules()}
    counts = {"n": 0}
    for cls in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
        original = cls.forward

        def counted(self, *args, _original=original, **kwargs):
            counts["n"] += id(self) in inside
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counted)
    return counts


@pytest.fixture(params=list(MODELS))
def built(request):
    return (request.param, *_build(request.param))


def test_all_compute_plan_is_bit_identical_and_detach_restores(built):
    name, model, inputs = built
    plain = _run(model, inputs)
    L = len(sublayers(model))
    cached = _run(model, inputs, CachePlan(torch.ones(len(TIMES), L, dtype=torch.bool)))
    for a, b in zip(plain, cached):
        assert torch.equal(a, b), name
    assert not any("forward" in m.__dict__ for m in model.modules())  # every wrapper removed
    again = _run(model, inputs)
    assert all(torch.equal(a, b) for a, b in zip(plain, again))


def test_reuse_and_forecast_skip_the_sublayer_and_its_inputs(built, monkeypatch):
    name, model, inputs = built
    subs = describe(model)
    L = len(subs)
    counts = _count_layer_calls(monkeypatch, [s.module for s in subs] + [m for s in subs for m in s.inputs])
    _run(model, inputs, CachePlan(torch.ones(len(TIMES), L, dtype=torch.bool)))
    every_evaluation = counts["n"]
    assert every_evaluation > 0
    for action in (REUSE, FORECAST1, FORECAST2):
        actions = torch.full((len(TIMES), L), action, dtype=torch.int8)
        actions[0] = actions[2] = actions[3] = COMPUTE  # forecasts then have two / three points
        counts["n"] = 0
        _run(model, inputs, CachePlan.from_actions(actions))
        # The 3 non-computed evaluations of 6 run none of the sub-layers' Linear layers, nor their inputs'.
        assert counts["n"] * 2 == every_evaluation, (name, action)


def test_every_action_runs_and_keeps_the_output_structure(built):
    name, model, inputs = built
    L = len(sublayers(model))
    g = torch.Generator().manual_seed(1)
    actions = torch.randint(0, 5, (len(TIMES), L), generator=g).to(torch.int8)
    actions[0] = COMPUTE
    outs = _run(model, inputs, CachePlan.from_actions(actions))
    plain = _run(model, inputs)
    assert [o.shape for o in outs] == [p.shape for p in plain]
    assert all(torch.isfinite(o).all() for o in outs)
    assert not torch.equal(outs[-1], plain[-1])  # the plan changed something
    all_drop = torch.full((len(TIMES), L), DROP, dtype=torch.int8)
    all_drop[0] = COMPUTE
    dropped = _run(model, inputs, CachePlan.from_actions(all_drop))
    assert [o.shape for o in dropped] == [p.shape for p in plain]


def test_reuse_equals_the_plain_model_with_the_stored_output_substituted(built):
    """REUSE at evaluation 1 of every sub-layer = the plain model at evaluation 1 with each sub-layer's output replaced
    by its output at evaluation 0 (the skipped inputs' stand-ins are read by nothing)."""
    name, model, inputs = built
    subs = describe(model)
    stored = {}
    handles = [
        s.module.register_forward_hook(lambda m, a, out, i=i: stored.__setitem__(i, out)) for i, s in enumerate(subs)
    ]
    with torch.no_grad():
        _output(model, inputs(TIMES[0]))
    for h in handles:
        h.remove()
    handles = [s.module.register_forward_hook(lambda m, a, out, i=i: stored[i]) for i, s in enumerate(subs)]
    with torch.no_grad():
        expected = _output(model, inputs(TIMES[1]))
    for h in handles:
        h.remove()
    actions = torch.full((len(TIMES), len(subs)), REUSE, dtype=torch.int8)
    actions[0] = COMPUTE
    cached = _run(model, inputs, CachePlan.from_actions(actions))
    assert torch.equal(cached[1], expected), name


def test_names_kinds_and_optional_children():
    flux, _ = _build("flux")
    names = [s.name for s in describe(flux)]
    assert names == [
        "transformer_blocks.0.attn",
        "transformer_blocks.0.ff",
        "transformer_blocks.0.ff_context",
        "transformer_blocks.1.attn",
        "transformer_blocks.1.ff",
        "transformer_blocks.1.ff_context",
        "single_transformer_blocks.0.proj_out",
        "single_transformer_blocks.1.proj_out",
    ]
    assert [s.kind for s in describe(flux)][:3] == ["joint_attn", "mlp", "mlp_context"]
    assert {s.block for s in describe(flux)} == {0, 1, 2, 3}
    sd35, _ = _build("sd3.5")
    names = [s.name for s in describe(sd35)]
    assert "transformer_blocks.0.attn2" in names and "transformer_blocks.1.attn2" not in names  # dual layer 0 only
    assert "transformer_blocks.2.ff_context" not in names  # the last block has none
    assert len(names) == 4 + 3 + 3 - 1


def test_a_child_called_twice_per_model_call_is_refused():
    model, inputs = _build("pixart")
    block = model.transformer_blocks[0]
    block.norm2.register_forward_hook(lambda m, a, out: [block.ff(out), None][1])  # ff runs twice per block call
    L = len(sublayers(model))
    with pytest.raises(RuntimeError, match=r"transformer_blocks\.0\.ff .*called twice"):
        _run(model, inputs, CachePlan(torch.ones(len(TIMES), L, dtype=torch.bool)))


def test_a_changed_shape_recomputes_instead_of_reusing():
    """A batch that changes mid-run (guidance truncated, a skip-layer call) gives every sub-layer inputs of another
    shape: each computes afresh (equal to the plain model), then reuses from that computation."""
    model, _ = _build("flux")
    L = len(sublayers(model))
    actions = torch.full((3, L), REUSE, dtype=torch.int8)
    actions[0] = COMPUTE

    def inputs(batch, t):
        return dict(
            hidden_states=_randn(batch, 16, 4),
            encoder_hidden_states=_randn(batch, 8, 32, seed=1),
            pooled_projections=_randn(batch, 32, seed=2),
            img_ids=_randn(16, 3, seed=3),
            txt_ids=_randn(8, 3, seed=4),
            timestep=torch.full((batch,), t),
        )

    with torch.no_grad():
        with CacheEngine(model, CachePlan.from_actions(actions)) as engine:
            engine.begin_step(0)
            model(**inputs(2, 1.0))
            engine.begin_step(1)
            out = model(**inputs(1, 0.9), return_dict=False)[0]  # the batch halves mid-run
            engine.begin_step(2)
            reused = model(**inputs(1, 0.8), return_dict=False)[0]
        plain = model(**inputs(1, 0.9), return_dict=False)[0]
        later = model(**inputs(1, 0.8), return_dict=False)[0]
    assert torch.equal(out, plain)  # computed afresh, not a stale batch-2 tensor
    assert reused.shape == plain.shape and not torch.equal(reused, later)  # then reused from it


def test_unsupported_transformer_names_its_class_and_the_supported_ones():
    blocks = dict(down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    model = diffusers.UNet2DModel(sample_size=8, block_out_channels=(4, 8), norm_num_groups=4, **blocks)
    with pytest.raises(TypeError, match=r"UNet2DModel.*FluxTransformer2DModel"):
        sublayers(model)
