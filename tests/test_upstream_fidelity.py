"""Our sampling paths against float64 transcriptions of the upstream computations.

Each reference below is written from the published equations of the code that produced the paper's numbers (DiT's
`forward_with_cfg`, ADM's respaced `ddim_sample` / `p_sample` with learned-range variance, U-ViT's two-call guidance
and DPM-Solver++ 2S, the L2C block caches), independently of our sampler and cache engine, and compared with what a
user gets from `generate()`. Everything runs in float64; the tolerance is 1e-6 relative.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from l2c.cache.plan import CachePlan
from l2c.jobs.generate import SampleConfig, generate
from l2c.models import create_model
from l2c.sampling import StackedRandomGenerator, space_timesteps, time_uniform
from l2c.sampling.diffusion import DiffusionSpec
from l2c.sampling.schedules import alphas_cumprod, linear_betas, scaled_linear_betas

SEEDS, CLASSES = [11, 12, 13], [1, 7, 3]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def random_model(name: str, **kwargs) -> torch.nn.Module:
    """Tiny model with every weight non-zero (adaLN-Zero would make a fresh DiT the identity)."""
    torch.manual_seed(0)
    model = create_model(name, **kwargs).double().eval().requires_grad_(False)
    for p in model.parameters():
        p.data.normal_(0, 0.15)
    return model


def latent_dit() -> torch.nn.Module:
    """4 latent channels and learned sigma (8 outputs), so DiT's 3-channel guidance leaves channel 3 unguided."""
    return random_model("DiT-tiny", in_channels=4, depth=3)


def initial_noise(model) -> torch.Tensor:
    gen = StackedRandomGenerator(SEEDS)
    return gen.randn((len(SEEDS), model.in_channels, model.input_size, model.input_size), dtype=torch.float64), gen


# ------------------------------------------------------------------------------------------- upstream DiT / ADM
def upstream_layer_norm(h):
    """DiT's norm1 / norm2: nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)."""
    return torch.nn.functional.layer_norm(h, h.shape[-1:], eps=1e-6)


def dit_block_cached(model, x, t, y, reuse: set[int], cache: dict):
    """One DiT forward as the L2C DiT code runs it: each block's attention (router index 2i) and MLP (2i + 1) is
    computed and stored, or taken from the previous evaluation's cache when its index is in `reuse`."""
    h = model.x_embedder(x) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y)
    for i, block in enumerate(model.blocks):
        shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN_modulation(c).chunk(6, dim=1)
        if 2 * i in reuse:
            a = cache[2 * i]
        else:
            a = block.attn(upstream_layer_norm(h) * (1 + scale1[:, None]) + shift1[:, None])
        h = h + gate1[:, None] * a
        if 2 * i + 1 in reuse:
            m = cache[2 * i + 1]
        else:
            m = block.mlp(upstream_layer_norm(h) * (1 + scale2[:, None]) + shift2[:, None])
        h = h + gate2[:, None] * m
        cache[2 * i], cache[2 * i + 1] = a, m
    return model.unpatchify(model.final_layer(h, c))


def dit_forward_with_cfg(model, x, t, y, scale, reuse, cache):
    """DiT's forward_with_cfg: the model sees the FIRST half duplicated; only 3 output channels are guided."""
    half = x[: len(x) // 2]
    out = dit_block_cached(model, torch.cat([half, half]), t, y, reuse, cache)
    eps, rest = out[:, :3], out[:, 3:]
    cond, uncond = eps.split(len(eps) // 2)
    guided = uncond + scale * (cond - uncond)
    return torch.cat([torch.cat([guided, guided]), rest], dim=1)


def adm_respaced(steps: int):
    """ADM's SpacedDiffusion: betas recomputed from ᾱ at the kept timesteps, then the usual derived arrays."""
    kept = space_timesteps(1000, str(steps))
    base = alphas_cumprod(linear_betas())
    betas, last = [], 1.0
    for k in kept:
        betas.append(1 - base[k] / last)
        last = base[k]
    betas = np.array(betas)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    return dict(
        kept=kept,
        betas=betas,
        abar=abar,
        abar_prev=abar_prev,
        post_log_var=np.log(np.append(post_var[1], post_var[1:])),
        coef1=betas * np.sqrt(abar_prev) / (1 - abar),
        coef2=(1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar),
    )


def reference_dit_sampling(model, steps, scale, plan_reuse, ddpm=False):
    """The respaced DDIM (η = 0) or DDPM loop of ADM around forward_with_cfg, with L2C's per-step reuse sets."""
    d = adm_respaced(steps)
    z, gen = initial_noise(model)
    x = torch.cat([z, z])
    y = torch.tensor(CLASSES + [model.null_class] * len(CLASSES))
    C, cache = model.in_channels, {}
    for j, k in enumerate(range(steps - 1, -1, -1)):
        t = torch.full((len(x),), d["kept"][k])  # the model sees the original timestep
        out = dit_forward_with_cfg(model, x, t, y, scale, plan_reuse.get(j, set()), cache)
        eps, var_values = out[:, :C], out[:, C:]
        a, ap = d["abar"][k], d["abar_prev"][k]
        x0 = math.sqrt(1 / a) * x - math.sqrt(1 / a - 1) * eps
        if ddpm:
            mean = d["coef1"][k] * x0 + d["coef2"][k] * x
            frac = (var_values + 1) / 2
            log_var = frac * math.log(d["betas"][k]) + (1 - frac) * d["post_log_var"][k]
            x = mean + (torch.exp(0.5 * log_var) * gen.randn_like(x) if k > 0 else 0)
        else:
            eps = (math.sqrt(1 / a) * x - x0) / math.sqrt(1 / a - 1)  # ADM re-derives ε from x0
            x = x0 * math.sqrt(ap) + math.sqrt(1 - ap) * eps
    return x[: len(SEEDS)]


def alternate_plan(model, steps, seed=0):
    """Full evaluations at even j, random reuse subsets at the odd (cache) evaluations, as a dict and a CachePlan."""
    g = torch.Generator().manual_seed(seed)
    L = 2 * len(model.blocks)
    compute = torch.ones(steps, L, dtype=torch.bool)
    for j in range(1, steps, 2):
        compute[j] = torch.rand(L, generator=g) < 0.4
    reuse = {j: {l for l in range(L) if not compute[j, l]} for j in range(steps)}
    return compute, reuse


def ours(model, sampler, steps, scale, plan=None):
    spec = DiffusionSpec("linear", 0) if sampler in ("ddim", "ddpm") else DiffusionSpec("scaled_linear", 1)
    config = SampleConfig(sampler=sampler, steps=steps, guidance_scale=scale, batch_size=len(SEEDS))
    return generate(model, spec, SEEDS, CLASSES, config, plan=plan, progress=False)


def test_dit_ddim_guidance_matches_forward_with_cfg_uncached():
    model = latent_dit()
    ref = reference_dit_sampling(model, 12, 4.0, {})
    assert rel_err(ours(model, "ddim", 12, 4.0), ref) <= 1e-6


def test_dit_ddim_guidance_matches_forward_with_cfg_cached():
    model = latent_dit()
    compute, reuse = alternate_plan(model, 12)
    ref = reference_dit_sampling(model, 12, 4.0, reuse)
    assert rel_err(ours(model, "ddim", 12, 4.0, CachePlan(compute)), ref) <= 1e-6
    # the plan matters: the cached reference is far from the uncached one
    assert rel_err(reference_dit_sampling(model, 12, 4.0, {}), ref) > 1e-3


def test_dit_ddpm_learned_variance_under_guidance_matches_adm():
    model = latent_dit()
    ref = reference_dit_sampling(model, 10, 4.0, {}, ddpm=True)
    assert rel_err(ours(model, "ddpm", 10, 4.0), ref) <= 1e-6
    compute, reuse = alternate_plan(model, 10, seed=1)
    ref = reference_dit_sampling(model, 10, 4.0, reuse, ddpm=True)
    assert rel_err(ours(model, "ddpm", 10, 4.0, CachePlan(compute)), ref) <= 1e-6


# ------------------------------------------------------------------------------------------- upstream U-ViT
class DpmSchedule:
    """DPM-Solver's NoiseScheduleVP('discrete'): log α piecewise linear on t = n / 1000, in float64 numpy."""

    def __init__(self):
        self.t_grid = np.arange(1, 1001) / 1000.0
        self.log_alpha = 0.5 * np.cumsum(np.log(1 - scaled_linear_betas()))

    def alpha(self, t):
        return math.exp(np.interp(t, self.t_grid, self.log_alpha))

    def sigma(self, t):
        return math.sqrt(1 - self.alpha(t) ** 2)

    def lam(self, t):
        return math.log(self.alpha(t)) - math.log(self.sigma(t))

    def inverse_lam(self, v):
        log_alpha = -0.5 * np.logaddexp(0, -2 * v)
        return float(np.interp(log_alpha, self.log_alpha[::-1], self.t_grid[::-1]))


def uvit_block_cached(model, x, t, y, reuse: set[int], cache: dict):
    """One U-ViT forward as the L2C U-ViT code runs it (router index 2i / 2i + 1 over in, mid, out blocks)."""
    h = model.patch_embed(x)
    from l2c.models.layers import timestep_embedding

    time_token = timestep_embedding(t, h.shape[-1], dtype=torch.float64).unsqueeze(1)
    h = torch.cat([model.label_emb(y).unsqueeze(1), time_token, h], dim=1) + model.pos_embed
    skips, n_in = [], len(model.in_blocks)
    for i, block in enumerate(model.blocks):
        if i > n_in:
            h = block.skip_linear(torch.cat([h, skips.pop()], dim=-1))
        a = cache[2 * i] if 2 * i in reuse else block.attn(block.norm1(h))
        h = h + a
        m = cache[2 * i + 1] if 2 * i + 1 in reuse else block.mlp(block.norm2(h))
        h = h + m
        cache[2 * i], cache[2 * i + 1] = a, m
        if i < n_in:
            skips.append(h)
    return model.unpatchify(model.decoder_pred(model.norm(h))[:, model.extras :])


def reference_uvit_sampling(model, nfe, scale, plan_reuse):
    """U-ViT's sampler: DPM-Solver++ singlestep order 2 (r1 = 0.5, time-uniform outer grid built in float32 as
    upstream), model time t * 1000 (float32 t, as upstream's tensors), ε = ε_c + (w - 1)(ε_c - ε_u) from two calls
    with two independent caches (conditional, unconditional)."""
    ns = DpmSchedule()
    z, _ = initial_noise(model)
    x = z.clone()
    y = torch.tensor(CLASSES)
    y_null = torch.full_like(y, model.null_class)
    caches = ({}, {})
    outer = torch.linspace(1.0, 1e-3, nfe // 2 + 1, dtype=torch.float32)

    def data_prediction(x, t32, j):
        t_model = torch.full((len(x),), float(t32) * 1000, dtype=torch.float64)
        reuse = plan_reuse.get(j, set())
        eps_c = uvit_block_cached(model, x, t_model, y, reuse, caches[0])
        eps_u = uvit_block_cached(model, x, t_model, y_null, reuse, caches[1])
        eps = eps_c + (scale - 1) * (eps_c - eps_u)
        t = float(t32)
        return (x - ns.sigma(t) * eps) / ns.alpha(t)

    for i in range(nfe // 2):
        s, t = float(outer[i]), float(outer[i + 1])
        h = ns.lam(t) - ns.lam(s)
        s1 = float(np.float32(ns.inverse_lam(ns.lam(s) + 0.5 * h)))  # upstream's s1 is a float32 tensor
        d_s = data_prediction(x, s, 2 * i)
        x_s1 = ns.sigma(s1) / ns.sigma(s) * x - ns.alpha(s1) * math.expm1(-0.5 * h) * d_s
        d_s1 = data_prediction(x_s1, s1, 2 * i + 1)
        phi = math.expm1(-h)
        x = ns.sigma(t) / ns.sigma(s) * x - ns.alpha(t) * phi * d_s - ns.alpha(t) * phi * (d_s1 - d_s)
    return x


def shifted_plan(model, nfe, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = 2 * len(model.blocks)
    compute = torch.ones(nfe, L, dtype=torch.bool)
    for j in range(2, nfe, 2):
        compute[j] = torch.rand(L, generator=g) < 0.4
    return compute, {j: {l for l in range(L) if not compute[j, l]} for j in range(nfe)}


def uvit() -> torch.nn.Module:
    return random_model("U-ViT-tiny", in_chans=4)


def test_uvit_dpm_solver_2_two_call_guidance_matches_upstream_nfe20_and_50():
    model = uvit()
    for nfe in (20, 50):
        ref = reference_uvit_sampling(model, nfe, 1.4, {})
        assert rel_err(ours(model, "dpm-solver-2", nfe, 1.4), ref) <= 1e-6, nfe


def test_uvit_dpm_solver_2_cached_two_caches_match_upstream():
    model = uvit()
    compute, reuse = shifted_plan(model, 20)
    ref = reference_uvit_sampling(model, 20, 1.4, reuse)
    assert rel_err(ours(model, "dpm-solver-2", 20, 1.4, CachePlan(compute)), ref) <= 1e-6
    assert rel_err(reference_uvit_sampling(model, 20, 1.4, {}), ref) > 1e-5


def test_uvit_router_training_feeds_rounded_time_at_the_cache_step():
    """Upstream U-ViT router training feeds round(t·1000) to the teacher and the student at the cache evaluation
    (sampling feeds the float t·1000); the solver step into it keeps the float times."""
    from l2c.cache.engine import CacheEngine
    from l2c.router.router import Router
    from l2c.sampling import make_sampler
    from l2c.training.train_router import RouterTrainConfig, router_step_loss

    model = random_model("U-ViT-tiny")
    sampler = make_sampler("dpm-solver-2", 20, DiffusionSpec("scaled_linear", 1))
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(float(args[1][0])))
    router = Router(20, 2 * len(model.blocks), list(range(2, 20, 2))).double()
    engine = CacheEngine(model, mode="off")
    x0 = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 2])
    m = 4
    try:
        router_step_loss(model, engine, router, sampler, x0, y, m, torch.randn_like(x0), RouterTrainConfig())
    finally:
        engine.detach()
    t_m = float(time_uniform(10)[m // 2]) * 1000
    assert seen[-2:] == [round(t_m), round(t_m)]  # teacher, student
    assert t_m != round(t_m)  # the float time differs, so the test can tell them apart
    t_s = float(time_uniform(10)[m // 2 - 1]) * 1000
    assert abs(seen[0] - t_s) < 1e-3 and seen[0] != round(seen[0])  # the solver step into m keeps the float time


def test_bundled_dit_mnist_samples_unchanged_by_the_guidance_fix():
    """dit-mnist guides its only channel, so [x_c; x_c] and the doubled sampler state [x_c; x_u] are the same tensor:
    its published numbers (made before the fix, with the doubled state fed to the model) stand bit for bit."""
    from l2c.models.checkpoints import load_model
    from l2c.sampling import make_sampler

    model, _ = load_model("dit-mnist")
    spec, seeds = DiffusionSpec("linear", 0), [0, 1, 2, 3]
    config = SampleConfig(sampler="ddim", steps=6, guidance_scale=1.5, batch_size=4)
    new = generate(model, spec, seeds, seeds, config, progress=False)

    y2 = torch.tensor(seeds + [model.null_class] * 4)

    def doubled_state_denoiser(x, t, step):  # the form before the fix: the model sees the sampler's [x_c; x_u]
        cond, uncond = model(x, t, y2).chunk(2)
        return torch.cat([uncond + 1.5 * (cond - uncond)] * 2)

    z = StackedRandomGenerator(seeds).randn((4, 1, 28, 28))
    old = make_sampler("ddim", 6, spec).sample(doubled_state_denoiser, torch.cat([z, z]))[:4]
    assert torch.equal(new, old)
