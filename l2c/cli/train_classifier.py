"""`l2c train-classifier`: the small MNIST classifier whose features the metrics use."""

from __future__ import annotations

from pathlib import Path

HELP = "train the small MNIST classifier used as the metrics' feature network"


def add_arguments(p) -> None:
    p.add_argument("--epochs", type=int, default=2, help="epochs over the 60k train+val images")
    p.add_argument("--out", default="l2c/assets/mnist-classifier.safetensors", help="weights file")


def run(args) -> int:
    from ..metrics.classifier import train_classifier

    acc = train_classifier(Path(args.out), epochs=args.epochs)
    print(f"wrote {args.out}; test accuracy {100 * acc:.2f}%")
    return 0
