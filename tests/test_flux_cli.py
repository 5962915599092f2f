"""flux-mnist and FLUX folders in every command: taken by name with their own sampler, steps and guidance; sampled
through their workload (l2c.jobs.workload.FluxWorkload), which equals FluxPipeline under
l2c.integrations.diffusers.apply; bad input refused in one line with exit code 2 and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # FluxPipeline imports it
from safetensors.torch import load_file, save_file  # noqa: E402
from test_bad_input import run_refused  # noqa: E402
from test_workload import _packed_flux  # noqa: E402

from l2c.cli import build_parser, main  # noqa: E402
from l2c.cli.common import resolve_sampling_defaults  # noqa: E402
from l2c.jobs.flux_sampling import flux_pipeline, flux_vae_decoder, sample_flux_mnist  # noqa: E402
from l2c.jobs.generate import to_uint8  # noqa: E402
from l2c.models import flux_mnist  # noqa: E402

if not (flux_mnist.ASSET / "transformer" / "config.json").exists():
    pytest.skip("the bundled flux-mnist folder is not in this checkout", allow_module_level=True)


@pytest.fixture(scope="module")
def schedule4(tmp_path_factory):
    """A learned schedule of flux-mnist at 4 steps (forecasts and reuses), trained by the command itself with the
    model's own sampler and true CFG 2 (no --sampler / --cfg given)."""
    out = tmp_path_factory.mktemp("sched") / "flux4.safetensors"
    args = ["train-router", "--model", "flux-mnist", "--steps", "4", "--target-macs", "0.6", "--search-rounds", "0"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize(
    "model, sampler, steps, cfg",
    [
        ("dit-mnist", None, 20, 1.5),  # the sampler: the architecture's (ddim), resolved when the model is loaded
        ("uvit-mnist", None, 20, 1.5),
        ("flux-mnist", "diffusers-flowmatch-euler", 28, 2.0),
    ],
)
def test_each_model_takes_its_own_defaults(model, sampler, steps, cfg):
    for command in ("sample", "compare", "train-router"):
        args = build_parser().parse_args([command, "--model", model])
        resolve_sampling_defaults(args)
        assert (args.sampler, args.steps, args.cfg) == (sampler, steps, cfg), command
    args = build_parser().parse_args(["sample", "--model", "flux-mnist", "--steps", "5", "--cfg", "1"])
    resolve_sampling_defaults(args)
    assert (args.steps, args.cfg) == (5, 1.0)  # given values stay, even where they equal DiT's defaults
    args = build_parser().parse_args(["sample", "--model", "flux-mnist", "--steps", "20", "--cfg", "1.5"])
    resolve_sampling_defaults(args)
    assert (args.steps, args.cfg) == (20, 1.5)


def test_help_says_the_defaults_are_the_models_own(capsys):
    assert main(["sample", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "28 for flux-mnist" in text and "2.0 for flux-mnist" in text and "diffusers-flowmatch-euler" in text


def test_sample_with_a_schedule_equals_fluxpipeline_under_apply(schedule4, tmp_path):
    from l2c.integrations.diffusers import apply

    npz, png = tmp_path / "s.npz", tmp_path / "s.png"
    args = ["sample", "--model", "flux-mnist", "--steps", "4", "--seeds", "3,4,9", "--classes", "5,8,0"]
    assert main([*args, "--router", str(schedule4), "--npz", str(npz), "--out", str(png), "--batch-size", "2"]) == 0
    ours = np.load(npz)["arr_0"][..., 0]
    transformer, scheduler, conditioning = flux_mnist.load_flux_mnist()
    pipe = flux_pipeline(transformer, scheduler)
    with apply(pipe, str(schedule4)):
        theirs = sample_flux_mnist(pipe, conditioning, [3, 4, 9], [5, 8, 0], steps=4, cfg=2.0)
    np.testing.assert_array_equal(ours, theirs)
    uncached = sample_flux_mnist(pipe, conditioning, [3, 4, 9], [5, 8, 0], steps=4, cfg=2.0)
    assert not np.array_equal(ours, uncached)  # the schedule really skipped work


def test_router_show_takes_flux_mnist_for_its_macs(schedule4, capsys):
    assert main(["router", "show", str(schedule4), "--model", "flux-mnist"]) == 0
    assert "MACs per image, whole run" in capsys.readouterr().out
    assert main(["router", "show", str(schedule4), "--model", "dit-mnist"]) == 2  # another model's sub-layers


@pytest.mark.slow  # MNIST metrics for every method and point take most of its minute; the folder tests run compare
def test_compare_and_sweep_run_flux_mnist_through_its_workload(schedule4, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--model", "flux-mnist", "--steps", "4", "--router", str(schedule4), "--images", "4"]
    args += ["--repeats", "1", "--latency-batch", "2", "--fora", "2", "--smoothcache-images", "0", "--bootstrap", "5"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "compare.json").read_text())
    assert record["context"]["sampler"] == "diffusers-flowmatch-euler" and record["context"]["guidance_scale"] == 2.0
    rows = {r["method"]: r for r in record["rows"]}
    assert rows["uncached, 4 steps"]["executed"] == rows["uncached, 4 steps"]["total"] == 4 * 10
    assert "class_accuracy" in rows["FORA, interval 2"]  # MNIST-shaped: the bundled classifier's metrics
    sweep = tmp_path / "sweep"
    args = ["compare", "--sweep", "--model", "flux-mnist", "--steps", "4", "--images", "4", "--methods", "learned"]
    args += ["--schedule-routers", str(schedule4), "--repeats", "1", "--latency-batch", "2", "--bootstrap", "5"]
    assert main([*args, "--smoothcache-images", "0", "--out", str(sweep), "--quiet"]) == 0
    text = (sweep / "compare.md").read_text()
    assert "flux-mnist, diffusers-flowmatch-euler 4, guidance 2.0" in text and "learned" in text


def test_demo_runs_flux_mnist_uncached_against_its_schedule(schedule4, tmp_path, monkeypatch, capsys):
    import l2c.jobs.demo as demo

    # the bundled schedule is for 28 steps; the demo's path is the same at 4 (and 7x faster)
    monkeypatch.setattr(flux_mnist, "DEFAULT_STEPS", 4)
    monkeypatch.setitem(demo.SCHEDULES, "flux-mnist", str(schedule4))
    assert main(["demo", "--model", "flux-mnist", "--images", "5", "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in rows] == ["uncached", "learned schedule"]
    assert rows[0]["executed"] == rows[0]["total"] == 4 * 10 and rows[1]["executed"] < rows[1]["total"]
    assert (tmp_path / "learned.png").exists() and not (tmp_path / "router.png").exists()
    assert "| learned schedule | 4 |" in capsys.readouterr().out


def test_the_bundled_schedule_fits_flux_mnist_at_its_defaults():
    from l2c.cli.common import check_fits
    from l2c.jobs.demo import SCHEDULES
    from l2c.jobs.diffusers_workload import flux_workload
    from l2c.jobs.generate import SampleConfig
    from l2c.models.checkpoints import ASSETS
    from l2c.router.files import load_router

    router, meta = load_router(ASSETS / SCHEDULES["flux-mnist"])
    workload, _ = flux_workload("flux-mnist", steps=flux_mnist.DEFAULT_STEPS, cfg=flux_mnist.DEFAULT_CFG)
    config = SampleConfig(sampler="diffusers-flowmatch-euler", steps=28, guidance_scale=2.0)
    check_fits(router, meta, workload, config)  # raises ValueError naming what does not fit
    assert meta["kind"] == "schedule" and meta["guidance"] == 2.0 and meta["model"] == "flux-mnist"


# ---------------------------------------------------------------------------------------------------------------
# A FLUX pipeline folder (transformer/, scheduler/, vae/) with prompts from --conditioning


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    _packed_flux().save_pretrained(root / "transformer")
    diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).save_pretrained(root / "scheduler")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        latent_channels=4, block_out_channels=(8,), norm_num_groups=4, scaling_factor=0.5, shift_factor=0.1
    )
    vae.save_pretrained(root / "vae")
    return root


def _conditioning(path, **shapes):
    g = torch.Generator().manual_seed(0)
    default = dict(
        prompt_embeds=(3, 8, 32),
        pooled_prompt_embeds=(3, 32),
        negative_prompt_embeds=(1, 8, 32),
        negative_pooled_prompt_embeds=(1, 32),
    )
    default.update(shapes)
    save_file({k: torch.randn(*v, generator=g) for k, v in default.items() if v is not None}, str(path))
    return str(path)


def test_sample_a_flux_folder_with_conditioning_decodes_as_fluxpipeline(folder, tmp_path):
    conditioning = _conditioning(tmp_path / "c.safetensors")
    npz = tmp_path / "s.npz"
    args = ["sample", "--model", str(folder), "--conditioning", conditioning, "--steps", "3", "--cfg", "2"]
    args += ["--height", "32", "--width", "32", "--seeds", "0-3", "--npz", str(npz), "--out", str(tmp_path / "s.png")]
    assert main(args) == 0
    ours = np.load(npz)
    assert list(ours["labels"]) == [0, 1, 2, 0]  # every prompt in turn by default
    transformer = diffusers.FluxTransformer2DModel.from_pretrained(folder / "transformer")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    pipe = flux_pipeline(transformer, scheduler)
    c = load_file(conditioning)
    rows = [0, 1, 2, 0]
    latents = pipe(
        prompt_embeds=c["prompt_embeds"][rows],
        pooled_prompt_embeds=c["pooled_prompt_embeds"][rows],
        negative_prompt_embeds=c["negative_prompt_embeds"].expand(4, -1, -1),
        negative_pooled_prompt_embeds=c["negative_pooled_prompt_embeds"].expand(4, -1),
        true_cfg_scale=2.0,
        height=32,
        width=32,
        num_inference_steps=3,
        generator=[torch.Generator().manual_seed(s) for s in range(4)],
        output_type="latent",
        return_dict=False,
    )[0]
    # FluxPipeline's decode: unpack, then vae.decode(latents / scaling_factor + shift_factor)
    z = flux_mnist.unpack_latents(latents, 4, 4)
    expected = to_uint8(flux_vae_decoder(folder / "vae")(z))
    np.testing.assert_array_equal(ours["arr_0"], expected)


def test_compare_a_flux_folder_with_conditioning(folder, tmp_path):
    conditioning = _conditioning(tmp_path / "c.safetensors")
    router = tmp_path / "r.safetensors"
    common = ["--model", str(folder), "--conditioning", conditioning, "--steps", "3", "--height", "32", "--width", "32"]
    train = ["train-router", *common, "--target-macs", "0.7", "--search-rounds", "0", "--out", str(router)]
    assert main([*train, "--quiet"]) == 0
    out = tmp_path / "cmp"
    args = ["compare", *common, "--router", str(router), "--images", "3", "--repeats", "1", "--latency-batch", "2"]
    assert main([*args, "--fora", "2", "--smoothcache-images", "2", "--bootstrap", "5", "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert "fid" not in rows[0] and all("psnr_db" in r for r in rows)  # not MNIST: cost and PSNR only
    assert rows[1]["executed"] < rows[1]["total"] == rows[0]["executed"]
    sweep = tmp_path / "sweep"
    args = ["compare", "--sweep", *common, "--methods", "fora", "--values", "fora=2", "--images", "2", "--repeats", "1"]
    args += ["--latency-batch", "2", "--smoothcache-images", "0", "--bootstrap", "5"]
    assert main([*args, "--out", str(sweep)]) == 0
    methods = [json.loads(line)["method"] for line in (sweep / "sweep.jsonl").read_text().splitlines()[1:]]
    assert methods == ["uncached", "fora"]
    assert any(r["method"].startswith("SmoothCache") for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing written


def _bad_cases(folder, w):
    ok = _conditioning(w / "ok.safetensors")
    no_negative = _conditioning(w / "neg.safetensors", negative_prompt_embeds=None)
    no_pooled = _conditioning(w / "pooled.safetensors", pooled_prompt_embeds=None)
    narrow = _conditioning(w / "narrow.safetensors", prompt_embeds=(3, 8, 31))
    f = ["--model", str(folder), "--height", "32", "--width", "32", "--steps", "3"]
    flux = ["--model", "flux-mnist", "--steps", "3"]
    out = ["--out", str(w / "s.png")]
    return [
        (["sample", *flux, "--classes", "3,10", *out], ["--classes", "10", "0..9"]),
        (["sample", *flux, "--sampler", "ddim", *out], ["diffusers-flowmatch-euler", "--sampler"]),
        (["sample", *flux, "--ckpt", ok, *out], ["--ckpt"]),
        (["sample", *flux, "--conditioning", ok, *out], ["drop --conditioning"]),
        (["sample", *flux, "--height", "64", *out], ["--height"]),
        (["sample", "--model", "dit-mnist", "--conditioning", ok, *out], ["class-conditional"]),
        (["sample", *f, *out], ["--conditioning"]),
        (["sample", *f, "--conditioning", str(w / "missing.safetensors"), *out], ["does not exist"]),
        (["sample", *f, "--cfg", "2", "--conditioning", no_negative, *out], ["negative_prompt_embeds"]),
        (["sample", *f, "--conditioning", no_pooled, *out], ["pooled_prompt_embeds"]),
        (["sample", *f, "--conditioning", narrow, *out], ["prompt_embeds", "width 32"]),
        (["sample", *f, "--conditioning", ok, "--classes", "3", *out], ["--classes", "0..2"]),
        (["sample", *f, "--conditioning", ok, "--width", "40", *out], ["--width", "16"]),
        (["compare", *f, "--conditioning", narrow, "--router", ok, "--out", str(w / "c")], ["prompt_embeds"]),
        (["compare", "--sweep", *flux, "--methods", "first-block", "--out", str(w / "c")], ["first-block"]),
        (["compare", *flux, "--data", "mnist", "--router", ok, "--out", str(w / "c")], ["--data"]),
        (["train-router", *flux, "--out", str(w / "r.safetensors")], ["--target-speedup"]),
        (["demo", "--model", "flux-mnist", "--iterations", "3", "--out", str(w / "d")], ["--iterations"]),
        (["export-diffusers", "--model", "flux-mnist", "--out", str(w / "e")], ["already a diffusers folder"]),
    ]


def test_bad_flux_input_is_one_line_and_exit_2(folder, tmp_path, capsys):
    for argv, words in _bad_cases(folder, tmp_path):
        run_refused(argv, words, capsys, tmp_path)
