"""`l2c evaluate`: MNIST quality metrics of a samples .npz, optionally paired with a reference set."""

from __future__ import annotations

import json

HELP = "MNIST quality metrics of a samples .npz (FID, IS, precision / recall, accuracy)"


def add_arguments(p) -> None:
    p.add_argument("samples", help=".npz with arr_0 (uint8 NHWC, 28x28x1) and optionally labels")
    p.add_argument("--reference", default=None, help="paired metrics (PSNR, MAD) against this .npz of the same seeds")


def run(args) -> int:
    from ..metrics.report import evaluate_npz

    result = evaluate_npz(args.samples, reference=args.reference)
    print(json.dumps(result, indent=2))
    return 0
