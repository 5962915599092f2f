"""`l2c router import | show`: official router files in, per-step tables, JSON and heat-maps out."""

from __future__ import annotations

import json
from pathlib import Path

from ..models import MODELS
from .common import Formatter

HELP = "import, inspect and plot routers"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="router_command", required=True, metavar="ACTION")
    imp = sub.add_parser("import", help=IMPORT_HELP, description=IMPORT_HELP, formatter_class=Formatter)
    imp.add_argument("file", help="official DDIM{N}_router.pt or dpm{NFE}_router.pth")
    imp.add_argument("--arch", choices=["dit", "uvit"], required=True, help="architecture the router was trained for")
    imp.add_argument("--steps", type=int, required=True, help="DDIM steps (DiT) or NFE (U-ViT) of the file")
    imp.add_argument("--out", required=True, help="output .safetensors")
    show = sub.add_parser("show", help=SHOW_HELP, description=SHOW_HELP, formatter_class=Formatter)
    show.add_argument("router", help="l2c router file (.safetensors)")
    show.add_argument("--threshold", type=float, default=None, help="θ (default: the router's own)")
    show.add_argument(
        "--model",
        default=None,
        metavar="PRESET",
        help="model preset, to report MACs per image (dit-mnist, uvit-mnist, flux-mnist: the bundled models)",
    )
    show.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    show.add_argument("--png", default=None, help="write the router heat-map here")


def preset_name(value: str) -> str:
    """A model preset, matched without regard to case, so the bundled models' names (dit-mnist, uvit-mnist) that
    every other command takes name their presets here too."""
    if value in MODELS:
        return value

    def plain(name: str) -> str:
        return name.lower().replace("-", "").replace("/", "")

    matches = [name for name in MODELS if plain(name) == plain(value)]
    if not matches:
        raise ValueError(f"--model: unknown preset {value!r} (choose from {', '.join(MODELS)})")
    return matches[0]


IMPORT_HELP = "convert an official router file (.pt / .pth) to an l2c router file"
SHOW_HELP = "print a router's per-step executed sub-layers (and MACs), optionally plot it"


def run(args) -> int:
    return run_import(args) if args.router_command == "import" else run_show(args)


def run_import(args) -> int:
    from ..router.files import import_official, save_router
    from ..utils.io import file_sha256

    router, meta = import_official(args.file, args.arch, args.steps)
    meta["source_sha256"] = file_sha256(args.file)
    save_router(router, args.out, meta)
    print(
        f"wrote {args.out}: {router.num_steps} steps x {router.num_sublayers} sub-layers, "
        f"{len(router.cache_steps)} cache steps"
    )
    return 0


def _flux_mnist_profile():
    from ..cache.layout import describe
    from ..jobs.diffusers_workload import flux_workload, workload_macs

    workload, _ = flux_workload("flux-mnist")
    return workload_macs(workload), describe(workload.model)


def run_show(args) -> int:
    from ..cache.layout import describe_preset
    from ..cache.macs import profile_macs
    from ..router.files import load_router
    from ..router.report import format_table, plot_router, router_summary

    flux = args.model == "flux-mnist"  # a diffusers transformer, measured on itself rather than a preset
    model = preset_name(args.model) if args.model and not flux else None  # before any work
    router, meta = load_router(args.router)
    threshold = args.threshold if args.threshold is not None else meta.get("threshold", 0.5)
    macs = layout = None
    if flux:
        macs, layout = _flux_mnist_profile()
        model = args.model
    elif model:
        macs, layout = profile_macs(model), describe_preset(model)
    if model:
        if len(macs.sublayer_linear) != router.num_sublayers:
            raise ValueError(
                f"router has {router.num_sublayers} sub-layers per step, {model} has {len(macs.sublayer_linear)}"
            )
    if layout is None and "sublayers" in meta:  # recorded at training: kinds and blocks without the model
        from ..cache.layout import Sublayer

        recorded = meta["sublayers"]
        layout = [Sublayer(name, kind, block, name.rsplit(".", 1)[-1], None, ()) for name, kind, block in recorded]
    from ..router.budget import router_plan

    summary = router_summary(router, threshold, macs, router_plan(router, meta, threshold), layout)
    if macs is None and "stored_bytes_peak_per_image" in meta:  # recorded at training, in the model's dtype
        summary["stored_bytes_peak_per_image"] = meta["stored_bytes_peak_per_image"]
    if "predicted_time" in meta:  # a time budget: the cost model measured at training (l2c.cache.costs)
        cost = meta["cost"]
        summary["predicted_speedup"] = 1.0 / meta["predicted_time"]
        summary["predicted_on"] = f"{cost['device']}, {cost['dtype']}, batch {cost['batch']}"
    if "search_stopped" in meta:  # --search-minutes ended the schedule search early (l2c.training.deadline)
        summary["search_stopped"] = meta["search_stopped"]
    if "reference_steps" in meta:  # searched against the uncached images of another step count (--reference-steps)
        summary["reference_steps"] = meta["reference_steps"]
    if args.png:
        plot_router(router, threshold, args.png, title=Path(args.router).name, layout=layout)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_table(summary))
        if "search_stopped" in summary:
            stopped = summary["search_stopped"]
            print(f"search stopped early after {stopped['after_minutes']:.1f} min: {stopped['reason']}")
        if "reference_steps" in summary:
            print(f"searched against the uncached images of {summary['reference_steps']} steps (--reference-steps)")
        if args.png:
            print(f"wrote {args.png}")
    return 0
