"""Rectified-flow sampling: l2c's diffusers-flowmatch-euler sampler against FlowMatchEulerDiscreteScheduler's own loop
and against FluxPipeline (true CFG, precomputed prompt embeddings) on tiny random FluxTransformer2DModels, bit for bit;
flux-mnist's packing, conditioning and training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from test_layouts import MODELS  # noqa: E402

from l2c.jobs.flux_sampling import class_prompts, flux_denoiser, flux_pipeline, sample_flux_mnist  # noqa: E402
from l2c.models import flux_mnist  # noqa: E402
from l2c.sampling import SAMPLERS, make_sampler  # noqa: E402
from l2c.sampling.diffusion import DiffusionSpec  # noqa: E402
from l2c.sampling.flow_matching import DiffusersFlowMatchEuler, calculate_shift  # noqa: E402

TINY_FLUX = MODELS["flux"][1]  # diffusers' own FluxTransformer2DModel test config
FLUX_SCHEDULER = dict(flux_mnist.SCHEDULER_CONFIG)  # FLUX.1's: dynamic shift
FIXED_SHIFT = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)  # SD3's


def _needs_pipeline():
    from diffusers.utils import is_transformers_available

    if not is_transformers_available():  # FluxPipeline imports it
        pytest.skip("FluxPipeline needs the transformers package")


def _tiny_flux(seed=0, **overrides):
    torch.manual_seed(seed)
    return diffusers.FluxTransformer2DModel(**{**TINY_FLUX, **overrides}).eval()


def _toy_velocity(x, t):
    # any fixed function of (x, t) that mixes tokens and channels, so a wrong σ or step order changes the result
    return torch.tanh(x.roll(1, dims=1) * (t.view(-1, 1, 1) / 1000) + 0.3 * x.flip(2))


def _scheduler_loop(config: dict, steps: int, x: torch.Tensor, mu=None) -> torch.Tensor:
    # FluxPipeline's loop, minus the transformer: sigmas, mu, set_begin_index(0), then scheduler.step per timestep
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    scheduler.set_begin_index(0)
    for t in scheduler.timesteps:
        x = scheduler.step(_toy_velocity(x, t.expand(x.shape[0])), t, x, return_dict=False)[0]
    return x


@pytest.mark.parametrize("config", [FLUX_SCHEDULER, FIXED_SHIFT], ids=["dynamic-shift", "fixed-shift"])
@pytest.mark.parametrize("steps", [4, 28])
def test_sampler_equals_the_schedulers_own_loop(config, steps):
    x = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(1))
    spec = DiffusionSpec(scheduler_config='{"_class_name": "FlowMatchEulerDiscreteScheduler", %s}' % _json(config))
    sampler = make_sampler("diffusers-flowmatch-euler", steps, spec, image_seq_len=x.shape[1])
    mu = calculate_shift(16) if config.get("use_dynamic_shifting") else None
    expected = _scheduler_loop(config, steps, x.clone(), mu)
    got = sampler.sample(lambda x, t, j: _toy_velocity(x, t), x.clone())
    assert torch.equal(got, expected)
    assert sampler.num_evaluations == steps
    assert float(sampler.model_time(0, 1)[0]) == 1000.0  # σ_0 = 1 whatever the shift
    if config.get("use_dynamic_shifting"):  # FLUX's time shift really applies: σ' = e^mu / (e^mu + 1/σ − 1)
        s = np.linspace(1.0, 1 / steps, steps)[steps // 2]
        shifted = np.exp(mu) / (np.exp(mu) + 1 / s - 1)
        assert sampler.scheduler.sigmas[steps // 2].item() == pytest.approx(shifted, rel=1e-6)
        assert shifted > s  # mu = calculate_shift(16) ≈ 0.46 > 0: more time at high noise


def _json(config):
    import json

    return json.dumps(config)[1:-1]


def test_sampler_is_registered_and_needs_the_sequence_length_for_dynamic_shift():
    assert SAMPLERS["diffusers-flowmatch-euler"] is DiffusersFlowMatchEuler
    spec = DiffusionSpec(
        scheduler_config='{"_class_name": "FlowMatchEulerDiscreteScheduler", %s}' % _json(FLUX_SCHEDULER)
    )
    with pytest.raises(ValueError, match="image_seq_len"):
        make_sampler("diffusers-flowmatch-euler", 8, spec)


def test_noised_and_entering_at_a_later_step():
    # router training enters step m from noised(x0, m, ε): the rest of the run equals the scheduler's from m on
    spec = DiffusionSpec(scheduler_config='{"_class_name": "FlowMatchEulerDiscreteScheduler", %s}' % _json(FIXED_SHIFT))
    sampler = make_sampler("diffusers-flowmatch-euler", 6, spec)
    x0, noise = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(FIXED_SHIFT)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 6, 6))
    t3 = scheduler.timesteps[3:4]
    assert torch.equal(sampler.noised(x0, 3, noise), scheduler.scale_noise(x0, t3, noise))
    x, history = sampler.noised(x0, 3, noise), {}
    scheduler.set_begin_index(3)
    expected = x.clone()
    for i in (3, 4, 5):
        x = sampler.step(lambda x, t, j: _toy_velocity(x, t), x, i, history)
        t = scheduler.timesteps[i]
        expected = scheduler.step(_toy_velocity(expected, t.expand(2)), t, expected, return_dict=False)[0]
    assert torch.equal(x, expected)


def test_calculate_shift_and_packing_equal_fluxpipelines():
    _needs_pipeline()
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as upstream

    for n in (4, 49, 256, 1024, 4096):
        assert calculate_shift(n) == upstream(n)
    z = torch.randn(3, 4, 14, 14)
    packed = FluxPipeline._pack_latents(z, 3, 4, 14, 14)
    assert torch.equal(flux_mnist.pack_latents(z), packed)
    assert torch.equal(flux_mnist.unpack_latents(packed, 14, 14), FluxPipeline._unpack_latents(packed, 112, 112, 8))
    assert torch.equal(flux_mnist.unpack_latents(packed, 14, 14), z)
    assert torch.equal(
        flux_mnist.image_ids(14, 14), FluxPipeline._prepare_latent_image_ids(3, 7, 7, "cpu", torch.float32)
    )


@pytest.mark.parametrize("cfg", [1.0, 2.5], ids=["no-cfg", "true-cfg"])
def test_sampler_with_flux_denoiser_equals_fluxpipeline(cfg):
    _needs_pipeline()
    transformer = _tiny_flux()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER)
    pipe = flux_pipeline(transformer, scheduler)
    g = torch.Generator().manual_seed(0)
    prompts = dict(
        prompt_embeds=torch.randn(2, 3, 32, generator=g),
        pooled_prompt_embeds=torch.randn(2, 32, generator=g),
        negative_prompt_embeds=torch.randn(2, 3, 32, generator=g),
        negative_pooled_prompt_embeds=torch.randn(2, 32, generator=g),
    )
    seeds, steps, size = [7, 8], 5, 64  # 64 px with vae_scale_factor 8: latent 1 x 8 x 8, 16 packed tokens
    expected = pipe(**prompts, true_cfg_scale=cfg, **_plain(steps, size, seeds))[0]
    noise = torch.cat([torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    x = flux_mnist.pack_latents(noise)
    spec = DiffusionSpec(scheduler_config=scheduler.to_json_string())
    sampler = make_sampler("diffusers-flowmatch-euler", steps, spec, image_seq_len=x.shape[1])
    with torch.no_grad():
        got = sampler.sample(flux_denoiser(transformer, prompts, cfg, flux_mnist.image_ids(8, 8)), x)
    assert torch.equal(got, expected)
    if cfg > 1:  # true CFG really changes the result
        assert not torch.equal(got, pipe(**prompts, **_plain(steps, size, seeds))[0])


def _plain(steps, size, seeds):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return dict(
        height=size, width=size, num_inference_steps=steps, generator=gens, output_type="latent", return_dict=False
    )


def _tiny_flux_mnist_folder(tmp_path):
    torch.manual_seed(0)
    transformer = flux_mnist.create_transformer(num_layers=1, num_single_layers=1)
    prompts = flux_mnist.ClassPrompts()
    return flux_mnist.save_flux_mnist(transformer, prompts, tmp_path / "flux-mnist"), prompts


def test_flux_mnist_folder_round_trip_and_samples_depend_only_on_their_seed(tmp_path):
    _needs_pipeline()
    folder, prompts = _tiny_flux_mnist_folder(tmp_path)
    transformer, scheduler, conditioning = flux_mnist.load_flux_mnist(folder)
    assert transformer.dtype == torch.float32 and not transformer.config.guidance_embeds
    assert conditioning["prompt_embeds"].shape == (11, flux_mnist.TEXT_TOKENS, 64)
    assert torch.equal(conditioning["pooled_prompt_embeds"], prompts.pooled_prompt_embeds.detach().half().float())
    assert scheduler.config.use_dynamic_shifting
    pipe = flux_pipeline(transformer, scheduler)
    both = sample_flux_mnist(pipe, conditioning, [3, 4], [1, 2], steps=3, cfg=2.0, batch_size=2)
    alone = sample_flux_mnist(pipe, conditioning, [4], [2], steps=3, cfg=2.0)
    assert both.shape == (2, 28, 28) and both.dtype == np.uint8
    np.testing.assert_array_equal(both[1], alone[0])
    prompts_1 = class_prompts(conditioning, [1])
    assert torch.equal(prompts_1["negative_prompt_embeds"][0], conditioning["prompt_embeds"][flux_mnist.NULL_CLASS])
    with pytest.raises(ValueError, match="outside"):
        class_prompts(conditioning, [10])


def test_flow_matching_loss_target_is_velocity():
    from l2c.training.train_flux import FluxMNIST, flow_matching_loss

    torch.manual_seed(0)
    net = FluxMNIST(num_layers=1, num_single_layers=1)
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    labels = torch.tensor([0, 3, 9, flux_mnist.NULL_CLASS])
    loss = flow_matching_loss(net, x0, labels, torch.Generator().manual_seed(5))
    # the same draw by hand: t = sigmoid(u), x_t = (1 - t) z0 + t ε, target ε - z0
    g = torch.Generator().manual_seed(5)
    z0 = flux_mnist.pack_latents(flux_mnist.pixels_to_latents(x0))
    t = torch.sigmoid(torch.randn(4, generator=g))
    eps = torch.randn(z0.shape, generator=g)
    xt = (1 - t.view(-1, 1, 1)) * z0 + t.view(-1, 1, 1) * eps
    embeds, pooled = net.prompts(labels)
    v = net.transformer(
        hidden_states=xt,
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        timestep=t,
        img_ids=flux_mnist.image_ids(14, 14),
        txt_ids=torch.zeros(flux_mnist.TEXT_TOKENS, 3),
        return_dict=False,
    )[0]
    assert torch.equal(loss, torch.mean((v - (eps - z0)) ** 2))
    assert torch.equal(flux_mnist.latents_to_pixels(flux_mnist.pixels_to_latents(x0)), x0)


def test_sample_command_on_the_bundled_flux_mnist(tmp_path):
    _needs_pipeline()
    if not (flux_mnist.ASSET / "transformer" / "config.json").exists():
        pytest.skip("the bundled flux-mnist folder is not in this checkout")
    from PIL import Image

    from l2c.cli import main
    from l2c.jobs.generate import save_grid

    out = tmp_path / "grid.png"
    assert (
        main(
            ["sample", "--model", "flux-mnist", "--classes", "3,7", "--seeds", "0-1", "--steps", "3", "--out", str(out)]
        )
        == 0
    )
    transformer, scheduler, conditioning = flux_mnist.load_flux_mnist()
    images = sample_flux_mnist(flux_pipeline(transformer, scheduler), conditioning, [0, 1], [3, 7], steps=3, cfg=2.0)
    save_grid(images[..., None], tmp_path / "expected.png", scale=2)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "expected.png")))
    assert flux_mnist.DEFAULT_CFG == 2.0  # the command's default (its --cfg flag's own default means "the model's")
