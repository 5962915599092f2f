"""Workloads from diffusers FLUX folders with precomputed prompt embeddings: built, measured, and refused in one
line before any work when the conditioning does not fit the model."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from safetensors.torch import save_file  # noqa: E402
from test_workload import _packed_flux  # noqa: E402

from l2c.cache.layout import describe  # noqa: E402
from l2c.jobs.diffusers_workload import flux_workload, is_flux_model, workload_macs  # noqa: E402
from l2c.jobs.flux_sampling import flux_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    _packed_flux().save_pretrained(root / "transformer")
    diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).save_pretrained(root / "scheduler")
    return root


def _conditioning(path, **shapes):
    g = torch.Generator().manual_seed(0)
    default = dict(
        prompt_embeds=(2, 8, 32),
        pooled_prompt_embeds=(2, 32),
        negative_prompt_embeds=(1, 8, 32),
        negative_pooled_prompt_embeds=(1, 32),
    )
    default.update(shapes)
    save_file({k: torch.randn(*v, generator=g) for k, v in default.items() if v is not None}, str(path))
    return str(path)


def test_a_flux_folder_makes_a_workload_and_its_macs(folder, tmp_path):
    assert is_flux_model(str(folder)) and not is_flux_model(str(tmp_path))
    workload, meta = flux_workload(
        str(folder), _conditioning(tmp_path / "c.safetensors"), steps=4, cfg=2.0, height=64, width=64
    )
    assert meta["class"] == "FluxTransformer2DModel" and workload.latent == (4, 8, 8)
    macs = workload_macs(workload)
    assert len(macs.sublayer_linear) == len(describe(workload.model))
    assert macs.full("analytic") > macs.full("paper") > 0
    x = workload.noise([1, 2])
    denoise, _ = workload.denoiser(torch.tensor([0, 1]))
    with torch.no_grad():
        assert workload.sampler.sample(denoise, x).shape == (2, 16, 16)


@pytest.mark.parametrize(
    "shapes, cfg, message",
    [
        (dict(negative_prompt_embeds=None), 2.0, "no negative_prompt_embeds .*true CFG"),
        (dict(prompt_embeds=(2, 8, 31)), 1.0, r"prompt_embeds has shape \(2, 8, 31\), expected \(P, S, 32\)"),
        (dict(prompt_embeds=(0, 8, 32), pooled_prompt_embeds=(0, 32)), 1.0, "P >= 1 prompts"),
        (dict(pooled_prompt_embeds=None), 1.0, "no pooled_prompt_embeds"),
        (dict(pooled_prompt_embeds=(3, 32)), 1.0, "2 prompt_embeds but 3 pooled"),
    ],
)
def test_conditioning_that_does_not_fit_is_refused(folder, tmp_path, shapes, cfg, message):
    path = _conditioning(tmp_path / "c.safetensors", **shapes)
    with pytest.raises(ValueError, match=message) as caught:
        flux_workload(str(folder), path, steps=4, cfg=cfg, height=64, width=64)
    assert "\n" not in str(caught.value)


def test_a_folder_without_prompts_is_refused(folder, tmp_path):
    with pytest.raises(ValueError, match="pass --conditioning"):
        flux_workload(str(folder), None, steps=4)
    (tmp_path / "x.safetensors").write_text("not safetensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        flux_workload(str(folder), str(tmp_path / "x.safetensors"), steps=4)


def test_train_router_searches_a_flux_folder_and_apply_runs_the_schedule(folder, tmp_path, capsys):
    from l2c.cli import main
    from l2c.integrations.diffusers import apply
    from l2c.router.files import load_router

    conditioning = _conditioning(tmp_path / "c.safetensors")
    out = tmp_path / "flux.safetensors"
    args = ["train-router", "--model", str(folder), "--conditioning", conditioning, "--steps", "4", "--cfg", "2"]
    args += ["--height", "64", "--width", "64", "--target-macs", "0.5", "--search-rounds", "1"]
    args += ["--search-images", "2", "--check-images", "0", "--max-cache-memory", "1", "--out", str(out)]
    assert main(args) == 0
    router, meta = load_router(out)
    assert meta["arch"] == "FluxTransformer2DModel" and meta["sampler"] == "diffusers-flowmatch-euler"
    assert router.logits.shape == (4, len(describe(_packed_flux())))
    assert main(["router", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "stored at the peak:" in shown  # recorded at training: no preset needed
    assert "context MLP" in shown and "fused" in shown  # the kinds recorded at training, not a guess
    transformer = diffusers.FluxTransformer2DModel.from_pretrained(folder / "transformer")
    pipe = flux_pipeline(transformer, diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    g = torch.Generator().manual_seed(0)
    with apply(pipe, str(out)) as handle:
        pipe(
            prompt_embeds=torch.randn(1, 8, 32, generator=g),
            pooled_prompt_embeds=torch.randn(1, 32, generator=g),
            height=64,
            width=64,
            num_inference_steps=4,
            output_type="latent",
        )
        assert handle.step == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cfg", "2", "--conditioning", "NEG"], "no negative_prompt_embeds"),
        (["--max-cache-memory", "0.000001", "--conditioning", "OK"], "start stores"),
        (["--search-rounds", "0", "--max-cache-memory", "1", "--conditioning", "OK"], "needs a value > 0 and a search"),
    ],
)
def test_train_router_bad_flux_input_is_one_line_and_exit_2(folder, tmp_path, capsys, extra, message):
    from l2c.cli import main

    files = {
        "NEG": _conditioning(tmp_path / "neg.safetensors", negative_prompt_embeds=None),
        "OK": _conditioning(tmp_path / "ok.safetensors"),
    }
    extra = [files.get(a, a) for a in extra]
    out = tmp_path / "r.safetensors"
    args = ["train-router", "--model", str(folder), "--steps", "3", "--height", "32", "--width", "32"]
    args += ["--target-macs", "0.5", "--search-rounds", "1", "--search-images", "1", "--check-images", "0"]
    code = main([*args, *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
