"""A DiTTransformer2DModel trained in diffusers (its own embedder in every block, which our DiT cannot hold) is driven
on itself: a run through the workload equals DiTPipeline's, and `l2c train-router --target-macs` searches a schedule
on the folder's transformer, which l2c.apply then runs in DiTPipeline."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from l2c.cache.layout import sublayers  # noqa: E402
from l2c.cli import main  # noqa: E402
from l2c.integrations.diffusers import apply  # noqa: E402
from l2c.integrations.diffusers_convert import NotConvertible, diffusers_to_dit  # noqa: E402
from l2c.jobs.dit_workload import DiTWorkload, dit_macs, dit_workload  # noqa: E402
from l2c.router.files import load_router  # noqa: E402

STEPS, CFG = 4, 4.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    # 1000 label embeddings: DiTPipeline hard-codes the null class 1000 for its doubled guidance batch.
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
    ).eval()
    with torch.no_grad():  # random weights everywhere: every block's embedder differs, the zero-init gates open
        for p in transformer.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
    ).eval()
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    out = tmp_path_factory.mktemp("native-dit") / "pipe"
    pipe.save_pretrained(out)
    return out, pipe


def _decode(pipe, latents):  # DiTPipeline's last lines, transcribed
    return (pipe.vae.decode(1 / pipe.vae.config.scaling_factor * latents).sample / 2 + 0.5).clamp(0, 1)


def _ours(workload, seeds, labels):
    with torch.no_grad():
        z = workload.noise(seeds)
        denoise, copies = workload.denoiser(torch.tensor(labels))
        return workload.sampler.sample(denoise, torch.cat([z] * copies))[: len(seeds)]


def test_the_folder_is_not_convertible_and_a_workload_run_equals_dit_pipeline(folder):
    path, pipe = folder
    with pytest.raises(NotConvertible, match="block 1's"):
        diffusers_to_dit(pipe.transformer)
    workload, meta = dit_workload(str(path), steps=STEPS, cfg=CFG)
    assert meta["sampler"] == "diffusers-ddim" and meta["class"] == "DiTTransformer2DModel"
    seeds, labels = [3, 8], [1, 7]
    for seed, label in zip(seeds, labels):  # one image per run, as the pipeline is called (batch sizes round apart)
        with torch.no_grad():
            ours = _decode(pipe, _ours(workload, [seed], [label]))
        theirs = pipe(
            class_labels=[label],
            guidance_scale=CFG,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
        ).images
        assert torch.equal(ours, theirs)
    latents = _ours(workload, seeds, labels)
    unguided = DiTWorkload(workload.model, workload.sampler, 1.0)
    assert not torch.equal(_ours(unguided, seeds, labels), latents)  # the guidance really acts


def test_macs_are_measured_on_the_transformer(folder):
    workload, _ = dit_workload(str(folder[0]), steps=STEPS, cfg=CFG)
    macs = dit_macs(workload)
    assert len(macs.sublayer_linear) == len(sublayers(workload.model)) == 4
    # attn1: q, k, v, out projections of 16 tokens at width 16; ff: 16 -> 64 -> 16.
    assert macs.sublayer_linear[0] == 4 * 16 * 16 * 16 and macs.sublayer_linear[1] == 2 * 16 * 16 * 64


def test_train_router_searches_on_the_folder_and_apply_runs_it(folder, tmp_path):
    path, pipe = folder
    out = tmp_path / "native.safetensors"
    args = ["--model", str(path), "--steps", str(STEPS), "--cfg", str(CFG), "--target-macs", "0.6", "-q"]
    search = ["--search-rounds", "1", "--search-images", "2", "--check-images", "0", "--out", str(out)]
    assert main(["train-router", *args, *search]) == 0
    router, meta = load_router(out)
    assert meta["arch"] == "DiTTransformer2DModel" and meta["sampler"] == "diffusers-ddim"
    assert meta["met_macs"] <= 0.6 + 1e-9
    handle = apply(pipe, str(out))
    try:
        cached = pipe(class_labels=[1], guidance_scale=CFG, num_inference_steps=STEPS, output_type="pt").images
    finally:
        handle.remove()
    plain = pipe(class_labels=[1], guidance_scale=CFG, num_inference_steps=STEPS, output_type="pt").images
    assert cached.shape == plain.shape and not torch.equal(cached, plain)
    # l2c sample runs the schedule on the folder too (the router file fits its sub-layers and evaluations).
    grid = tmp_path / "cached.png"
    sample = ["sample", "--model", str(path), "--steps", str(STEPS), "--cfg", str(CFG), "--seeds", "0-1"]
    assert main([*sample, "--router", str(out), "--out", str(grid), "-q"]) == 0 and grid.exists()
    assert main([*sample, "--steps", "5", "--router", str(out), "--out", str(tmp_path / "no.png")]) == 2
    # Algorithm 1 needs our DiT's training path: a one-line refusal naming the search instead.
    assert main(["train-router", "--model", str(path), "--iterations", "2", "--out", str(tmp_path / "r.pt")]) == 2


def test_l2c_sample_draws_the_folder_as_dit_pipeline_does(folder, tmp_path):
    import numpy as np

    path, pipe = folder
    npz, grid = tmp_path / "s.npz", tmp_path / "grid.png"
    argv = ["sample", "--model", str(path), "--classes", "1,7", "--seeds", "3,8", "--steps", str(STEPS)]
    assert main([*argv, "--cfg", str(CFG), "--npz", str(npz), "--out", str(grid), "-q"]) == 0
    ours = np.load(npz)["arr_0"].astype(int)  # (N, H, W, 3) uint8, decoded by the folder's vae/
    for i, (seed, label) in enumerate([(3, 1), (8, 7)]):
        theirs = pipe(
            class_labels=[label],
            guidance_scale=CFG,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images[0]
        # l2c decodes z / scale where DiTPipeline decodes (1 / scale) * z: a rounding apart, at most one uint8 level.
        assert np.abs(ours[i] - np.round(theirs * 255)).max() <= 1
    assert grid.exists()
