"""What converting the bundled dit-mnist to diffusers' DiTTransformer2DModel does to its outputs and samples.

    python benchmarks/diffusers_conversion.py [--images 128] [--json out.json]

diffusers' DiT embeds the timestep with downscale_freq_shift=1 (frequencies over 127) where DiT uses 128, so the
converted model is close, not equal. Measured here, all in one process on the same noise:

* one forward (ε) at several t: converted (diffusers' shift), converted with DiT's shift patched in (should be 0),
  and the exported-and-reloaded folder (diffusers also recomputes the position table);
* 20-step DDIM samples with guidance 1.5 through our sampler (DiT's respacing): relative L2, PSNR, class accuracy;
* diffusers' own DDIMScheduler loop (the one a diffusers user writes; "leading" spacing t = 950, 900, ..., 0) against
  our DDIM on the same timesteps, with the patched and the unpatched converted model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers import DDIMScheduler  # noqa: E402

from l2c.integrations.diffusers_convert import (  # noqa: E402
    ddim_scheduler_config,
    dit_to_diffusers,
    export_diffusers,
    load_diffusers_folder,
)
from l2c.metrics.classifier import classify, load_classifier  # noqa: E402
from l2c.metrics.scores import paired_metrics  # noqa: E402
from l2c.models.checkpoints import load_model  # noqa: E402
from l2c.sampling.guidance import batched_cfg_denoiser  # noqa: E402
from l2c.sampling.samplers import sample_ddim  # noqa: E402
from l2c.sampling.schedules import alphas_cumprod, linear_betas, space_timesteps  # noqa: E402

CFG, STEPS = 1.5, 20


def as_ours(transformer):
    """A diffusers transformer called like our DiT: model(x, t, y) -> ε."""
    return lambda x, t, y: transformer(x, timestep=t, class_labels=y).sample


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def our_ddim(model, noise, y, spacing: str) -> torch.Tensor:
    denoise = batched_cfg_denoiser(model, y, CFG, null_class=10, guided_channels=1)
    timesteps = space_timesteps(1000, spacing)
    x = sample_ddim(denoise, torch.cat([noise, noise]), timesteps, alphas_cumprod=alphas_cumprod(linear_betas(1000)))
    return x[: len(noise)]


def diffusers_ddim(transformer, noise, y) -> torch.Tensor:
    """DiTPipeline's loop without the VAE (pixel-space model) and with the null class of a 10-class model."""
    scheduler = DDIMScheduler(**ddim_scheduler_config({"schedule": "linear", "num_timesteps": 1000}))
    scheduler.set_timesteps(STEPS)
    x, labels = torch.cat([noise, noise]), torch.cat([y, torch.full_like(y, 10)])
    for t in scheduler.timesteps:
        half = x[: len(x) // 2]
        eps = transformer(torch.cat([half, half]), timestep=t.expand(len(x)), class_labels=labels).sample
        cond, uncond = eps.chunk(2)
        guided = uncond + CFG * (cond - uncond)
        x = scheduler.step(torch.cat([guided, guided]), t, x).prev_sample
    return x[: len(noise)]


def compare(a: torch.Tensor, b: torch.Tensor, classifier, y) -> dict:
    rel = float((a - b).norm() / a.norm())
    paired = paired_metrics(to_uint8(a), to_uint8(b))
    _, logits = classify(classifier, to_uint8(b))
    return {
        "max_abs": float((a - b).abs().max()),
        "rel_l2": rel,
        "psnr_db": paired["psnr_db"],
        "accuracy": float((logits.argmax(1) == y.numpy()).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--images", type=int, default=64, help="seeds 0..N-1, classes i %% 10 (docs: 128, ~4 min on 2 CPU cores)"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    model, meta = load_model("dit-mnist")
    shifted, exact = dit_to_diffusers(model), dit_to_diffusers(model, exact_timestep_embedding=True)
    with tempfile.TemporaryDirectory() as tmp:
        export_diffusers(model, Path(tmp) / "dit-mnist", meta)
        reloaded, _ = load_diffusers_folder(Path(tmp) / "dit-mnist", as_dit=False)
    gen = torch.Generator().manual_seed(0)
    n = args.images
    noise = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.arange(n) % 10
    out: dict = {"images": n, "cfg": CFG, "steps": STEPS}

    t = torch.tensor([0, 1, 10, 50, 100, 250, 500, 750, 999]).repeat_interleave(8)
    x, labels = torch.randn(len(t), 1, 28, 28, generator=gen), torch.arange(len(t)) % 11
    ref = model(x, t, labels)
    out["forward_max_abs"] = {
        name: float((as_ours(m)(x, t, labels) - ref).abs().max())
        for name, m in (("converted", shifted), ("converted_dit_shift", exact), ("reloaded_folder", reloaded))
    }
    out["forward_ref_abs_max"] = float(ref.abs().max())

    classifier = load_classifier()
    base = our_ddim(model, noise, y, str(STEPS))
    _, logits = classify(classifier, to_uint8(base))
    out["ours_accuracy"] = float((logits.argmax(1) == y.numpy()).mean())
    out["our_ddim"] = {
        name: compare(base, our_ddim(as_ours(m), noise, y, str(STEPS)), classifier, y)
        for name, m in (("converted", shifted), ("converted_dit_shift", exact), ("reloaded_folder", reloaded))
    }
    leading = our_ddim(model, noise, y, f"ddim{STEPS}")
    _, logits = classify(classifier, to_uint8(leading))
    out["ours_leading_accuracy"] = float((logits.argmax(1) == y.numpy()).mean())
    out["diffusers_ddim"] = {
        name: compare(leading, diffusers_ddim(m, noise, y), classifier, y)
        for name, m in (("converted", shifted), ("converted_dit_shift", exact))
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
