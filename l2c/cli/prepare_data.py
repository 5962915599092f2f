"""`l2c prepare-data`: decode an image folder once into a memory-mapped, resumable training set."""

from __future__ import annotations

HELP = "decode an image folder once into a memory-mapped training set"


def add_arguments(p) -> None:
    p.add_argument("folder", help="image folder, one sub-folder per class (ImageNet layout)")
    p.add_argument("--size", type=int, required=True, help="image side after ADM's centre crop (256 for DiT-XL/2-256)")
    p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="1 = grey, 3 = RGB")
    p.add_argument(
        "--vae", default=None, help="local AutoencoderKL folder: store latents of each image and its mirror image"
    )
    p.add_argument("--chunk", type=int, default=64, help="images per write (progress is recorded after each)")
    p.add_argument("--out", required=True, help="output folder (an interrupted run resumes when started again)")


def run(args) -> int:
    from ..data.prepared import prepare_image_folder

    encode = None
    if args.vae:
        from ..utils.vae import load_vae
        from .errors import library_output_held

        with library_output_held():
            encode = load_vae(args.vae).encode
    dataset = prepare_image_folder(args.folder, args.out, args.size, args.channels, encode=encode, chunk=args.chunk)
    print(
        f"wrote {args.out}: {len(dataset)} {dataset.kind} of shape {dataset.shape} in {len(dataset.classes)} classes; "
        f"train with --data {args.out}"
    )
    return 0
