"""A diffusers folder as --model: the converted model computes what the folder's transformer computes, and the
diffusers-* samplers are the loop a diffusers user writes with that scheduler, so a router trained for them is trained
for the pipeline's own timesteps and update rule."""

import json

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler  # noqa: E402

from l2c.cache import CacheEngine  # noqa: E402
from l2c.cache.schedules import taylorseer  # noqa: E402
from l2c.cli import main  # noqa: E402
from l2c.integrations.diffusers import apply, export_diffusers, load_diffusers_folder  # noqa: E402
from l2c.jobs.loading import load_for_sampling  # noqa: E402
from l2c.models import create_model  # noqa: E402
from l2c.router.files import load_router  # noqa: E402
from l2c.sampling import make_sampler  # noqa: E402
from l2c.sampling.samplers import default_sampler  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(3)
    model = create_model("DiT-tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.2)
    out = tmp_path_factory.mktemp("folders") / "dit-tiny"
    diffusion = {"schedule": "linear", "time_offset": 0, "num_timesteps": 1000}
    export_diffusers(model.eval(), out, {"preset": "DiT-tiny", "diffusion": diffusion})
    return out


def test_folder_model_computes_what_the_folder_computes(folder):
    model, spec, meta = load_for_sampling(str(folder))
    transformer, _ = load_diffusers_folder(folder, as_dit=False)
    assert meta["preset"] == "DiT-tiny" and meta["path"].endswith(".safetensors")
    assert model.t_embedder.frequency_shift == 1.0  # diffusers' spacing, kept
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([0, 1, 50, 500, 999]), torch.tensor([0, 3, 9, 10, 4])
    with torch.no_grad():
        assert torch.equal(model(x, t, y), transformer(x, timestep=t, class_labels=y).sample)
    assert json.loads(spec.scheduler_config)["_class_name"] == "DDIMScheduler"
    assert default_sampler(model, spec) == "diffusers-ddim"  # the folder's scheduler, unless --sampler says else


def hand_loop(transformer, scheduler, x, y, steps=STEPS):
    """The loop a diffusers user writes (no guidance, ε = the first channels of a learned-σ output)."""
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        eps = transformer(x, timestep=t.expand(len(x)), class_labels=y).sample[:, : x.shape[1]]
        x = scheduler.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("name", ["diffusers-ddim", "diffusers-dpmpp-2m"])
def test_diffusers_samplers_are_the_pipeline_loop(folder, name):
    model, spec, _ = load_for_sampling(str(folder))
    transformer, _ = load_diffusers_folder(folder, as_dit=False)
    scheduler = DDIMScheduler.from_pretrained(folder)
    if name == "diffusers-dpmpp-2m":
        scheduler = DPMSolverMultistepScheduler.from_config(scheduler.config, algorithm_type="dpmsolver++")
    x, y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 2, 3, 4])
    sampler = make_sampler(name, STEPS, spec)
    with torch.no_grad():
        theirs = hand_loop(transformer, scheduler, x, y)
        ours = sampler.sample(lambda x, t, j: model(x, t, y), x)
        assert torch.equal(ours, theirs)
        # twice: every run starts from a clean scheduler state
        assert torch.equal(sampler.sample(lambda x, t, j: model(x, t, y), x), theirs)
        # cached: a plan through l2c's engine on the converted model = the same plan through l2c.apply on the
        # diffusers transformer in the hand-written loop
        plan = taylorseer(STEPS, 2 * len(model.blocks), 2, 1)
        with CacheEngine(model, plan) as engine:
            ours_cached = sampler.sample(engine.wrap(lambda x, t, j: model(x, t, y)), x)
        with apply(transformer, plan, scheduler=scheduler):
            theirs_cached = hand_loop(transformer, scheduler, x, y)
    assert not torch.allclose(ours_cached, ours)
    torch.testing.assert_close(ours_cached, theirs_cached, rtol=1e-5, atol=1e-5)


def test_train_router_on_a_folder_records_its_scheduler(folder, tmp_path):
    out = tmp_path / "router.safetensors"
    common = ["--model", str(folder), "--steps", "4", "--iterations", "2", "--batch-size", "2"]
    data = ["--data", "generated", "--generated-images", "4"]
    assert main(["train-router", *common, *data, "--sampler", "diffusers-dpmpp-2m", "--out", str(out)]) == 0
    _, meta = load_router(out)
    assert meta["sampler"] == "diffusers-dpmpp-2m" and meta["model"] == "DiT-tiny"
    transformer, _ = load_diffusers_folder(folder, as_dit=False)
    ddim = DDIMScheduler.from_pretrained(folder)
    with pytest.raises(ValueError, match="trained for DPMSolverMultistepScheduler"):
        apply(transformer, out, scheduler=ddim)  # another scheduler: refused before anything is attached
    assert not any(m._forward_pre_hooks for m in transformer.modules())
    apply(transformer, out, scheduler=DPMSolverMultistepScheduler.from_config(ddim.config)).remove()
    grid = tmp_path / "grid.png"
    sample = ["sample", "--model", str(folder), "--steps", "4", "--seeds", "0-1", "--classes", "1", "--out", str(grid)]
    assert main([*sample, "--sampler", "diffusers-dpmpp-2m", "--router", str(out)]) == 0 and grid.is_file()
    assert main(["train-router", *common, "--ckpt", str(out), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert main(["train-router", "--model", str(tmp_path), "--out", str(tmp_path / "y.safetensors")]) == 2


def test_readme_flow_on_a_saved_pipeline_folder(folder, tmp_path):
    """The README's diffusers snippet end to end on a DiTPipeline folder (model_index.json, transformer/, vae/,
    scheduler/): train a schedule on the folder with the command line, load the pipeline with from_pretrained, cache
    it with `l2c.apply` inside a `with`, and get the uncached images back after it."""
    from diffusers import AutoencoderKL, DiTPipeline

    import l2c

    transformer, _ = load_diffusers_folder(folder, as_dit=False)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=1,  # DiT-tiny's channels
        norm_num_groups=8,
        sample_size=8,
    )
    pipe_folder, sched = tmp_path / "pipe", tmp_path / "sched.safetensors"
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler.from_pretrained(folder)).save_pretrained(
        pipe_folder
    )
    args = ["--model", str(pipe_folder), "--steps", str(STEPS), "--target-macs", "0.5", "--search-rounds", "0"]
    assert main(["train-router", *args, "--cfg", "1", "--out", str(sched)]) == 0
    pipe = DiTPipeline.from_pretrained(pipe_folder)
    pipe.set_progress_bar_config(disable=True)

    def run():  # guidance 1: DiTPipeline's null class is 1000, DiT-tiny has 10 classes
        gen = torch.Generator().manual_seed(0)
        return pipe([1, 2], guidance_scale=1.0, num_inference_steps=STEPS, generator=gen, output_type="np").images

    reference = run()
    with l2c.apply(pipe, str(sched)) as handle:
        cached = run()
        assert handle.calls == STEPS
    assert not (cached == reference).all()
    assert (run() == reference).all()
