"""`l2c train-model`: train a DiT or U-ViT preset, or flux-mnist, from scratch (how the bundled models were made)."""

from __future__ import annotations

from pathlib import Path

from ..models import MODELS

HELP = "train a DiT or U-ViT preset, or flux-mnist, from scratch (the bundled MNIST models)"
FLUX = "flux-mnist"  # diffusers' FluxTransformer2DModel with rectified flow (l2c.training.train_flux)


def add_arguments(p) -> None:
    p.add_argument(
        "--model",
        default="DiT-mnist",
        choices=[*MODELS, FLUX],
        metavar="PRESET",
        help=f"model preset, or {FLUX} (rectified flow; --schedule, --min-snr-gamma and --vae do not apply)",
    )
    p.add_argument(
        "--data",
        default="mnist",
        help="'mnist', a folder made by `l2c prepare-data`, or an image folder (prepared into OUT/data first)",
    )
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips of folder data")
    p.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.9995, help="EMA decay")
    p.add_argument("--schedule", default="", help="beta schedule (linear | scaled_linear); '' = architecture default")
    p.add_argument("--min-snr-gamma", type=float, default=5.0, help="Min-SNR-γ loss weighting (0 = uniform, as DiT)")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between atomic checkpoints")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--out", default="runs/model", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--vae", default=None, help="local AutoencoderKL folder (latent presets with --data FOLDER)")


def run(args) -> int:
    if args.model == FLUX:
        return _run_flux(args)
    import numpy as np

    from ..data.sources import open_training_data
    from ..models import create_model
    from ..training.train_model import TrainModelConfig, check_resume, train_model

    config = TrainModelConfig(
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        min_snr_gamma=args.min_snr_gamma,
        schedule=args.schedule,
        seed=args.seed,
        ckpt_every=args.ckpt_every,
        threads=args.threads,
        random_flip=args.data != "mnist" and not args.no_flip,
    )
    latent = MODELS[args.model].latent
    record = {"data": args.data, "vae": args.vae}  # the data, which the config does not name
    check_resume(Path(args.out), config, args.resume, record)  # before a folder is prepared (it can take hours)
    data = open_training_data(args.data, create_model(args.model), latent, args.vae, Path(args.out) / "data")
    _, _, state = train_model(config, data, Path(args.out), resume=args.resume, record=record)
    print(
        f"trained {args.model} to step {state['step']}; final loss (mean of last 100) "
        f"{np.mean(state['losses'][-100:]):.4f}; checkpoint {Path(args.out) / 'checkpoint.pt'}"
    )
    return 0


def _run_flux(args) -> int:
    import numpy as np

    from ..data.mnist import load_mnist, to_model_range
    from ..data.prepared import ArrayDataset
    from ..training.train_flux import TrainFluxConfig, train_flux

    if args.data != "mnist" or args.vae:
        raise ValueError(f"{FLUX} trains on MNIST: drop --data and --vae")
    config = TrainFluxConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        seed=args.seed,
        ckpt_every=args.ckpt_every,
        threads=args.threads or 1,  # one thread unless told: the other core stays free
    )
    x, y = load_mnist("trainval")
    _, state = train_flux(config, ArrayDataset(to_model_range(x), y), Path(args.out), resume=args.resume)
    print(
        f"trained {FLUX} to step {state['step']}; final loss (mean of last 100) "
        f"{np.mean(state['losses'][-100:]):.4f}; checkpoint {Path(args.out) / 'checkpoint.pt'}"
    )
    return 0
