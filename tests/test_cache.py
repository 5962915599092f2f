"""Cache engine and plans: identity, hand-computed skips, reference loop, blending, gradients, STE, keep-set."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2c.cache import CacheEngine, CachePlan, cache_steps_for
from l2c.cache.layout import LAYOUTS, BlockLayout, sublayers
from l2c.jobs.generate import SampleConfig, generate
from l2c.models import create_model
from l2c.router import Router
from l2c.sampling.diffusion import DiffusionSpec
from l2c.sampling.schedules import alphas_cumprod, linear_betas, space_timesteps


def random_model(preset, dtype=torch.float32):
    model = create_model(preset).to(dtype).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.2)
    return model


def spec_for(preset):
    return DiffusionSpec("linear", 0 if preset.startswith("DiT") else 1)


@pytest.mark.parametrize("preset,sampler", [("DiT-tiny", "ddim"), ("U-ViT-tiny", "dpm-solver-2")])
@pytest.mark.parametrize("cfg", [1.0, 1.5])
def test_all_compute_plan_is_bitwise_identical(preset, sampler, cfg):
    model = random_model(preset)
    sc = SampleConfig(sampler=sampler, steps=6, guidance_scale=cfg)
    plain = generate(model, spec_for(preset), [0, 1, 2], [1, 2, 3], sc, progress=False)
    L = len(sublayers(model))
    cached = generate(model, spec_for(preset), [0, 1, 2], [1, 2, 3], sc, plan=CachePlan.full(6, L), progress=False)
    assert torch.equal(plain, cached)


@pytest.mark.parametrize("preset", ["DiT-tiny", "U-ViT-tiny"])
def test_detach_restores_model(preset):
    model = random_model(preset)
    keys = list(model.state_dict())
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 20]), torch.tensor([1, 2])
    before = model(x, t, y)
    L = len(sublayers(model))
    plan = CachePlan(torch.tensor([[True] * L, [False] * L]))
    engine = CacheEngine(model, plan)
    assert all("forward" in m.__dict__ for m in sublayers(model))
    assert list(model.state_dict()) == keys  # attaching renames nothing
    with pytest.raises(RuntimeError, match="already attached"):
        CacheEngine(model, plan)
    engine.begin_step(0)
    model(x, t, y)
    engine.begin_step(1)
    skipped = model(x, t + 5, y)
    engine.detach()
    assert not any("forward" in m.__dict__ for m in sublayers(model))
    assert not model._forward_pre_hooks
    assert torch.equal(model(x, t, y), before)
    assert not torch.equal(model(x, t + 5, y), skipped)  # the skip really changed the output while attached


# ------------------------------------------------------------------ hand-computed skips on a dummy architecture
class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


class AddOne(nn.Module):
    def forward(self, x):
        return x + 1


class DummyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.mlp = Doubler(), AddOne()

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class DummyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([DummyBlock(), DummyBlock()])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


@pytest.fixture
def dummy_layout():
    LAYOUTS[DummyNet] = BlockLayout(lambda m: list(m.blocks))
    yield
    del LAYOUTS[DummyNet]


def test_hand_computed_skip(dummy_layout):
    net = DummyNet()
    # sub-layers: 0 = block0.attn, 1 = block0.mlp, 2 = block1.attn, 3 = block1.mlp
    plan = CachePlan(torch.tensor([[True, True, True, True], [False, True, True, False]]))
    engine = CacheEngine(net, plan)
    engine.begin_step(0)
    # step 0, x = 1: block0 attn 2 -> x 3; mlp 4 -> x 7; block1 attn 14 -> x 21; mlp 22 -> x 43
    assert net(torch.tensor(1.0)).item() == 43.0
    engine.begin_step(1)
    # step 1, x = 10: block0 attn reused 2 -> x 12; mlp computed 13 -> x 25; block1 attn computed 50 -> x 75;
    # mlp reused 22 -> x 97. (Computed everywhere it would be 30 -> 61 -> 183 -> 367.)
    assert net(torch.tensor(10.0)).item() == 97.0
    # only outputs reused at the next step were kept (sub-layers 0 and 3 from step 0: two float32 scalars), and
    # freed after their last read
    assert engine.peak_stored_bytes == 2 * 4 and engine.stored_bytes == 0
    engine.detach()


def test_blending_mixes_fresh_and_recorded(dummy_layout):
    net = DummyNet()
    engine = CacheEngine(net)
    with engine.recording():
        net(torch.tensor(1.0))  # stores attn0 = 2, mlp0 = 4, attn1 = 14, mlp1 = 22
    for beta, expected in ((1.0, 367.0), (0.0, 10 + 2 + 4 + 14 + 22)):
        # β = 1: fresh (30 -> 61 -> 183 -> 367). β = 0: every branch returns its stored value: 10+2+4+14+22 = 52.
        with engine.blending(torch.full((4,), beta)):
            assert net(torch.tensor(10.0)).item() == expected
    with engine.blending(torch.tensor([0.5, 1.0, 1.0, 1.0])):
        # attn0 = 0.5*20 + 0.5*2 = 11 -> x 21; mlp 22 -> 43; attn1 86 -> 129; mlp 130 -> 259
        assert net(torch.tensor(10.0)).item() == 259.0
    with engine.bypassed():
        assert net(torch.tensor(10.0)).item() == 367.0
    engine.detach()


@pytest.mark.parametrize("preset", ["DiT-tiny", "U-ViT-tiny"])
def test_blending_on_models_matches_fresh_and_cached(preset):
    model = random_model(preset, torch.float64)
    x1, x2 = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t, y = torch.tensor([100, 100]), torch.tensor([1, 2])
    L = len(sublayers(model))
    fresh = model(x2, t, y)
    with CacheEngine(model) as engine:
        with engine.recording():
            model(x1, t, y)
        with engine.blending(torch.ones(L, dtype=torch.float64)):
            assert torch.equal(model(x2, t, y), fresh)
        with engine.blending(torch.zeros(L, dtype=torch.float64)):
            soft0 = model(x2, t, y)
    plan = CachePlan(torch.stack([torch.ones(L, dtype=torch.bool), torch.zeros(L, dtype=torch.bool)]))
    with CacheEngine(model, plan) as engine:
        engine.begin_step(0)
        model(x1, t, y)
        engine.begin_step(1)
        torch.testing.assert_close(soft0, model(x2, t, y), rtol=0, atol=1e-12)


def test_sampling_under_plan_equals_reference_loop():
    """DDIM with plan P on DiT-tiny vs a loop here that runs the blocks by hand and applies P itself."""
    from l2c.models.dit import modulate

    model = random_model("DiT-tiny", torch.float64)
    N, S = 2, 6
    ts = space_timesteps(1000, str(S))
    abar = alphas_cumprod(linear_betas())
    g = torch.Generator().manual_seed(3)
    compute = torch.rand(S, 4, generator=g) > 0.5
    compute[0] = True
    plan = CachePlan(compute)
    y = torch.tensor([1, 2])
    z = torch.randn(N, 1, 8, 8, dtype=torch.float64)
    from l2c.sampling import sample_ddim

    with CacheEngine(model, plan) as engine:
        ours = sample_ddim(engine.wrap(lambda x, t, s: model(x, t, y)), z.clone(), ts, alphas_cumprod=abar)

    last = {}
    x = z.clone()
    for step, k in enumerate(range(S - 1, -1, -1)):
        t = torch.full((N,), ts[k])
        h = model.x_embedder(x) + model.pos_embed
        c = model.t_embedder(t) + model.y_embedder(y)
        for i, blk in enumerate(model.blocks):
            sh1, sc1, g1, sh2, sc2, g2 = blk.adaLN_modulation(c).chunk(6, dim=1)
            if compute[step, 2 * i]:
                last[2 * i] = blk.attn(modulate(F.layer_norm(h, h.shape[-1:], eps=1e-6), sh1, sc1))
            h = h + g1.unsqueeze(1) * last[2 * i]
            if compute[step, 2 * i + 1]:
                last[2 * i + 1] = blk.mlp(modulate(F.layer_norm(h, h.shape[-1:], eps=1e-6), sh2, sc2))
            h = h + g2.unsqueeze(1) * last[2 * i + 1]
        eps = model.unpatchify(model.final_layer(h, c))[:, :1]  # learned-sigma channel ignored by DDIM
        a, ap = abar[ts[k]], (abar[ts[k - 1]] if k else 1.0)
        x0 = (1 / a) ** 0.5 * x - (1 / a - 1) ** 0.5 * eps
        x = ap**0.5 * x0 + (1 - ap) ** 0.5 * eps
    assert torch.equal(ours, x)


def test_uvit_separate_guidance_uses_two_caches():
    """Cond and uncond calls of one evaluation must not share cached outputs (docs/upstream.md §2.2)."""
    model = random_model("U-ViT-tiny", torch.float64)
    L = len(sublayers(model))
    sc = SampleConfig(sampler="dpm-solver-2", steps=4, guidance_scale=1.4)
    compute = torch.ones(4, L, dtype=torch.bool)
    compute[2] = False  # shifted cache step: reuses the intermediate evaluation 1
    cached = generate(model, spec_for("U-ViT"), [0, 1], [1, 2], sc, plan=CachePlan(compute), progress=False)

    from l2c.sampling import sample_dpm_solver
    from l2c.sampling.samplers import time_uniform
    from l2c.sampling.schedules import NoiseScheduleVP
    from l2c.sampling.seeds import StackedRandomGenerator

    # Reference: a denoiser that records each call's branch outputs at evaluation 1 and replays them at 2.
    store = {}
    y = torch.tensor([1, 2])

    def call(x, t, labels, step, tag):
        mods = sublayers(model)
        originals = [m.forward for m in mods]
        for idx, m in enumerate(mods):

            def fwd(*a, _o=originals[idx], _i=idx):
                if step == 2:
                    return store[(tag, _i)]
                out = _o(*a)
                store[(tag, _i)] = out
                return out

            m.forward = fwd
        try:
            return model(x, t, labels)
        finally:
            for m in mods:
                del m.forward

    def denoise(x, t, step):
        ec = call(x, t, y, step, "c")
        eu = call(x, t, torch.full_like(y, model.null_class), step, "u")
        return ec + 0.4 * (ec - eu)

    z = StackedRandomGenerator([0, 1]).randn((2, 1, 8, 8), dtype=torch.float64)
    ref = sample_dpm_solver(denoise, z, time_uniform(2), schedule=NoiseScheduleVP(linear_betas()))
    torch.testing.assert_close(cached, ref, rtol=0, atol=1e-12)


def test_plan_validation_and_keep():
    with pytest.raises(ValueError, match="step 0"):
        CachePlan(torch.tensor([[False, True], [True, True]]))
    plan = CachePlan(torch.tensor([[1, 1], [0, 1], [0, 1], [1, 1]], dtype=torch.bool))
    assert plan.keep().tolist() == [[True, False], [False, False], [False, False], [False, False]]
    assert plan.summary() == {
        "executed": 6,
        "total": 8,
        "executed_attn": 2,
        "executed_mlp": 4,
        "total_attn": 4,
        "total_mlp": 4,
    }
    assert cache_steps_for("alternate", 6) == [1, 3, 5]
    assert cache_steps_for("shifted", 6) == [2, 4]


def test_wrong_plan_size_is_rejected():
    model = random_model("DiT-tiny")
    with pytest.raises(ValueError, match="sub-layers"):
        CacheEngine(model, CachePlan.full(4, 6))
    with pytest.raises(ValueError, match="covers 4 steps|makes 6"):
        generate(model, spec_for("DiT"), [0], [1], SampleConfig(steps=6), plan=CachePlan.full(4, 4), progress=False)


def test_router_gradients_reach_only_router():
    from l2c.sampling import make_sampler
    from l2c.training.train_router import RouterTrainConfig, router_step_loss

    model = random_model("DiT-tiny")
    router = Router(6, 4, cache_steps_for("alternate", 6))
    sampler = make_sampler("ddim", 6, spec_for("DiT"))
    engine = CacheEngine(model)
    x0, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    loss, _ = router_step_loss(
        model, engine, router, sampler, x0, y, 3, torch.randn_like(x0), RouterTrainConfig(lam=0.01)
    )
    loss.backward()
    engine.detach()
    assert all(p.grad is None for p in model.parameters())
    g = router.logits.grad
    assert g[3].abs().sum() > 0 and g[[0, 1, 2, 4, 5]].abs().sum() == 0  # only the router of step m = 3


def test_straight_through_threshold():
    router = Router(4, 4, [1, 3])
    with torch.no_grad():
        router.logits[1] = torch.tensor([-2.0, -0.1, 0.1, 2.0])
    s = router.scores(1, ste_threshold=0.5)
    assert s.tolist() == [0.0, 0.0, 1.0, 1.0]
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (s * w).sum().backward()
    sig = torch.sigmoid(router.logits[1]).detach()
    # identity backward through the threshold: d/dlogit = w * sigmoid'(logit)
    torch.testing.assert_close(router.logits.grad[1], w * sig * (1 - sig))
    plan = router.to_plan(0.5)
    assert plan.compute[1].tolist() == [False, False, True, True] and plan.compute[0].all() and plan.compute[2].all()


def test_repeated_cached_sampling_is_identical():
    model = random_model("U-ViT-tiny")
    L = len(sublayers(model))
    compute = torch.ones(6, L, dtype=torch.bool)
    compute[[2, 4], ::2] = False
    sc = SampleConfig(sampler="dpm-solver-2", steps=6, guidance_scale=1.5, batch_size=2)
    a = generate(model, spec_for("U-ViT"), [0, 1, 2], [1, 2, 3], sc, plan=CachePlan(compute), progress=False)
    b = generate(model, spec_for("U-ViT"), [0, 1, 2], [1, 2, 3], sc, plan=CachePlan(compute), progress=False)
    assert torch.equal(a, b)
    assert not torch.equal(a, generate(model, spec_for("U-ViT"), [0, 1, 2], [1, 2, 3], sc, progress=False))
