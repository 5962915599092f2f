"""Samplers against diffusers' schedulers and float64 transcriptions of the spec's formulas; seeds; guidance."""

import math

import numpy as np
import pytest
import torch

from l2c.jobs.generate import SampleConfig, generate
from l2c.models import create_model
from l2c.sampling import (
    NoiseScheduleVP,
    StackedRandomGenerator,
    batched_cfg_denoiser,
    parse_int_list,
    sample_ddim,
    sample_ddpm,
    sample_dpm_solver,
    separate_cfg_denoiser,
    space_timesteps,
    time_uniform,
)
from l2c.sampling.diffusion import DiffusionSpec
from l2c.sampling.schedules import alphas_cumprod, linear_betas, scaled_linear_betas

SPEC_N20 = [0, 53, 105, 158, 210, 263, 315, 368, 421, 473, 526, 578, 631, 684, 736, 789, 841, 894, 946, 999]
SPEC_N50 = [
    0,
    20,
    41,
    61,
    82,
    102,
    122,
    143,
    163,
    183,
    204,
    224,
    245,
    265,
    285,
    306,
    326,
    347,
    367,
    387,
    408,
    428,
    449,
    469,
    489,
    510,
    530,
    550,
    571,
    591,
    612,
    632,
    652,
    673,
    693,
    714,
    734,
    754,
    775,
    795,
    816,
    836,
    856,
    877,
    897,
    917,
    938,
    958,
    979,
    999,
]


def test_respaced_timesteps_equal_spec_lists():
    assert space_timesteps(1000, "20") == SPEC_N20
    assert space_timesteps(1000, "50") == SPEC_N50
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))


def toy_eps(x, t, step=None):
    """A deterministic stand-in for a network: depends on x and on t nonlinearly."""
    tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return 0.3 * torch.tanh(x) + 0.1 * torch.sin(tt / 97.0) * x + 0.05 * torch.cos(tt / 31.0)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers(eta):
    from diffusers import DDIMScheduler

    N = 20
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    sched.set_timesteps(N)
    ts = sorted(int(t) for t in sched.timesteps)
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    noises = [torch.randn_like(x0) for _ in range(N)]
    it = iter(noises)
    ours = sample_ddim(
        toy_eps, x0.clone(), ts, alphas_cumprod=alphas_cumprod(linear_betas()), eta=eta, randn_like=lambda x: next(it)
    )
    x = x0.clone()
    for i, t in enumerate(sched.timesteps):
        x = sched.step(toy_eps(x, torch.full((3,), float(t))), t, x, eta=eta, variance_noise=noises[i]).prev_sample
    torch.testing.assert_close(ours, x.double(), rtol=1e-5, atol=1e-5)


def test_ddim_respaced_matches_float64_transcription():
    ts = space_timesteps(1000, "20")
    abar = alphas_cumprod(linear_betas())
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    seen = []
    ours = sample_ddim(lambda x, t, s: (seen.append(int(t[0])), toy_eps(x, t))[1], x.clone(), ts, alphas_cumprod=abar)
    assert seen == ts[::-1]  # the model receives the ORIGINAL timesteps, noisiest first
    ref = x.clone()
    for k in range(19, -1, -1):
        a, ap = abar[ts[k]], (abar[ts[k - 1]] if k else 1.0)
        eps = toy_eps(ref, torch.full((2,), float(ts[k])))
        x0 = math.sqrt(1 / a) * ref - math.sqrt(1 / a - 1) * eps
        ref = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_ddpm_learned_variance_matches_transcription():
    ts = space_timesteps(1000, "10")
    abar_all = alphas_cumprod(linear_betas())
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    noises = [torch.randn_like(x) for _ in range(10)]
    it = iter(noises)

    def model(x, t, s):
        return torch.cat([toy_eps(x, t), torch.tanh(x)], 1)  # ε and variance values v ∈ [-1, 1]

    ours = sample_ddpm(model, x.clone(), ts, alphas_cumprod=abar_all, randn_like=lambda x: next(it))
    abar = abar_all[ts]
    ref = x.clone()
    for j, k in enumerate(range(9, -1, -1)):
        a, ap = abar[k], (abar[k - 1] if k else 1.0)
        beta = 1 - a / ap
        out = model(ref, torch.full((2,), float(ts[k])), j)
        x0 = math.sqrt(1 / a) * ref - math.sqrt(1 / a - 1) * out[:, :1]
        mean = beta * math.sqrt(ap) / (1 - a) * x0 + (1 - ap) * math.sqrt(1 - beta) / (1 - a) * ref
        post_var = [1 - abar[i] / (abar[i - 1] if i else 1.0) for i in range(10)]
        post_var = [b * (1 - (abar[i - 1] if i else 1.0)) / (1 - abar[i]) for i, b in enumerate(post_var)]
        min_log = math.log(post_var[1] if k == 0 else post_var[k])
        frac = (out[:, 1:] + 1) / 2
        log_var = frac * math.log(beta) + (1 - frac) * min_log
        ref = mean + (torch.exp(0.5 * log_var) * noises[j] if k > 0 else 0)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_dpm_solver_singlestep_matches_float64_transcription():
    """U-ViT's DPM-Solver++ 2S (docs/upstream.md §3.2 formulas), λ-midpoint r1 = 0.5, model time t * 1000."""
    betas = scaled_linear_betas()
    ns = NoiseScheduleVP(betas)
    K = 5
    times = time_uniform(K)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    ours = sample_dpm_solver(toy_eps, x.clone(), times, schedule=ns, method="singlestep")

    log_alpha_grid = 0.5 * np.cumsum(np.log(1 - betas))
    t_grid = np.arange(1, 1001) / 1000.0

    def log_alpha(t):
        return np.interp(t, t_grid, log_alpha_grid)

    def lam(t):
        la = log_alpha(t)
        return la - 0.5 * math.log(1 - math.exp(2 * la))

    def inv_lam(v):
        la = -0.5 * np.logaddexp(0, -2 * v)
        return np.interp(la, log_alpha_grid[::-1], t_grid[::-1])

    def D(x, t):
        a = math.exp(log_alpha(t))
        return (x - math.sqrt(1 - a * a) * toy_eps(x, torch.full((2,), t * 1000))) / a

    ref = x.clone()
    for i in range(K):
        s, t = float(times[i]), float(times[i + 1])
        h = lam(t) - lam(s)
        s1 = float(np.float32(inv_lam(lam(s) + 0.5 * h)))
        a = {k: math.exp(log_alpha(v)) for k, v in (("s", s), ("s1", s1), ("t", t))}
        sg = {k: math.sqrt(1 - a[k] ** 2) for k in a}
        d_s = D(ref, s)
        x_s1 = sg["s1"] / sg["s"] * ref - a["s1"] * math.expm1(-0.5 * h) * d_s
        d_s1 = D(x_s1, s1)
        ref = sg["t"] / sg["s"] * ref - a["t"] * math.expm1(-h) * d_s - a["t"] * math.expm1(-h) * (d_s1 - d_s)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_dpm_solver_multistep_matches_diffusers():
    from diffusers import DPMSolverMultistepScheduler

    N = 20
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="sigma_min",
    )
    sched.set_timesteps(N)
    discrete = [int(t) for t in sched.timesteps]
    # Our continuous time t ↔ diffusers' index t*1000 - 1; the last time is σ_min's, index 0.
    times = torch.tensor([(d + 1) / 1000 for d in discrete] + [1e-3], dtype=torch.float64)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    ours = sample_dpm_solver(
        toy_eps, x.clone(), times, schedule=NoiseScheduleVP(scaled_linear_betas()), method="multistep", time_shift=-1.0
    )
    ref = x.clone().float()
    for t in sched.timesteps:
        ref = sched.step(toy_eps(ref, torch.full((2,), float(t))), t, ref).prev_sample
    torch.testing.assert_close(ours.float(), ref, rtol=1e-4, atol=1e-4)


def test_stacked_generator_rows_depend_only_on_seed():
    a = StackedRandomGenerator([5, 6, 7]).randn((3, 1, 2, 2))
    b = StackedRandomGenerator([7]).randn((1, 1, 2, 2))
    assert torch.equal(a[2], b[0])
    doubled = StackedRandomGenerator([5, 6]).randn((4, 1, 2, 2), copies=2)
    assert torch.equal(doubled[1], StackedRandomGenerator([6]).randn((2, 1, 2, 2), copies=2)[0])
    assert parse_int_list("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError):
        parse_int_list("3-1")


@pytest.mark.parametrize(
    "preset,sampler",
    [("DiT-tiny", "ddim"), ("DiT-tiny", "ddpm"), ("U-ViT-tiny", "dpm-solver-2"), ("U-ViT-tiny", "dpm-solver-2m")],
)
def test_images_independent_of_batch_size(preset, sampler):
    model = create_model(preset).double().eval()  # float64: batch-size-dependent BLAS blocking stays below 1e-9
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    spec = DiffusionSpec("linear", 0 if preset.startswith("DiT") else 1)
    seeds, classes = [3, 1, 4, 1, 5], [0, 1, 2, 3, 4]
    a = generate(
        model, spec, seeds, classes, SampleConfig(sampler=sampler, steps=6, eta=0.5, batch_size=5), progress=False
    )
    b = generate(
        model, spec, seeds, classes, SampleConfig(sampler=sampler, steps=6, eta=0.5, batch_size=2), progress=False
    )
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    c = generate(model, spec, seeds[2:3], classes[2:3], SampleConfig(sampler=sampler, steps=6, eta=0.5), progress=False)
    torch.testing.assert_close(a[2:3], c, rtol=1e-9, atol=1e-9)


def test_batched_cfg_guides_only_first_channels_like_dit():
    y = torch.tensor([1, 2])

    def model(x, t, yy):  # output channel c of row n = (label + 1) * (c + 1)
        return (yy.float() + 1)[:, None, None, None] * torch.arange(1, 9.0)[None, :, None, None].expand(
            len(yy), 8, 1, 1
        )

    out = batched_cfg_denoiser(model, y, scale=4.0, null_class=10, guided_channels=3)(torch.zeros(4, 4, 1, 1), None, 0)
    cond, uncond = (y.float() + 1), torch.tensor(11.0)
    for c in range(8):
        for row in range(4):
            n = row % 2
            if c < 3:  # guided: ε_u + s (ε_c - ε_u), same in both halves
                want = uncond * (c + 1) + 4.0 * (cond[n] - uncond) * (c + 1)
            else:  # passes through per half
                want = (cond[n] if row < 2 else uncond) * (c + 1)
            assert out[row, c, 0, 0].item() == pytest.approx(want.item())


def test_batched_and_separate_cfg_agree_when_all_channels_guided():
    model = create_model("DiT-tiny").eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    y = torch.tensor([3, 4])
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([500, 500])
    sep = separate_cfg_denoiser(model, y, 1.5, model.null_class)(x, t, 0)
    bat = batched_cfg_denoiser(model, y, 1.5, model.null_class, 2)(torch.cat([x, x]), torch.cat([t, t]), 0)
    torch.testing.assert_close(sep, bat[:2], rtol=1e-5, atol=1e-5)
