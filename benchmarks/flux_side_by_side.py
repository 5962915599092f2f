"""l2c, diffusers' cache hooks and cache-dit side by side on flux-mnist through FluxPipeline: same seeds, one process.

    python benchmarks/flux_side_by_side.py --routers R1.5.safetensors R2.safetensors ... [--train-missing]
        [--images 1000] [--batch-size 100] [--out flux_side_by_side_out]

The model is the bundled flux-mnist (diffusers' FluxTransformer2DModel, 2 double + 4 single blocks), sampled by
FluxPipeline itself with the precomputed class prompt embeddings: 28 steps, true CFG 2 (two transformer calls per
step under cache_context "cond" / "uncond"), output_type="latent", height = width = 112. Image i has seed i (its own
torch.Generator, as FluxPipeline takes a list) and class i % 10, whatever the batch.

Rows: uncached; fewer steps; l2c (`l2c.integrations.diffusers.apply(pipe, router file or plan)`: learned schedules
from `l2c train-router --model flux-mnist --target-speedup S`, and the training-free FORA / TaylorSeer plans; a
schedule searched with `--steps N` samples N steps, its row "l2c learned schedule on N steps"); diffusers' hooks
through `transformer.enable_cache(config)` (FirstBlockCache, TaylorSeer, MagCache, FasterCache,
PyramidAttentionBroadcast; --taylorseer-fewer-steps repeats the TaylorSeer rows on fewer steps); cache-dit 1.5.3
(`cache_dit.enable_cache(pipe, ...)`: DBCache with and without its TaylorSeer / FoCa / DMD calibrators, and its
steps_computation_mask presets). Per row: every image in batches
(executed work counted by forward pre-hooks on the blocks' Linear layers; quality: MNIST-FID with a 95 % bootstrap
interval, class accuracy, PSNR against the uncached images of the same seeds), then the latency
of one batch interleaved with an untouched uncached pipeline (l2c.jobs.timing.time_runs): speedup =
median(uncached) / median(row). After the last row the first uncached batch is sampled again on the pipeline every
tool was attached to and removed from; it must be bit-identical.

Resumable: each finished row is appended atomically to `sweep.jsonl` under --out (the uncached latents to
`reference.pt`); a rerun skips finished rows and refuses a folder written with other settings.

Counting. "Linear work" is the multiply-adds of every nn.Linear inside the blocks that ran, over the uncached run's
(attention's own QK^T / AV products are not in it). "Sub-layers" counts, per call, the layout's 10 sub-layers (double
block: attn, ff, ff_context; single block: the fused attn | MLP -> proj_out) by a Linear that runs only when the
sub-layer is computed: attn.to_out.0, ff.net.2, ff_context.net.2, and the single block's attn.to_q. Hooks on the
sub-layer modules themselves would also count the calls that l2c and diffusers' TaylorSeer answer from their cache.

What the tools need on FluxPipeline (diffusers 0.42.1, cache-dit 1.5.3; details by the classes below):
* cache-dit patches the pipeline *class* (`FluxPipeline.__call__`), so every FluxPipeline in the process enters its
  cache context. The timing reference is therefore an instance of a subclass that keeps the original `__call__`.
  `disable_cache(pipe)` restores the class; it leaves FluxPatchFunctor's instance `forward` on the transformer and
  on the single blocks, which this script deletes (checked: state-dict keys and instance forwards as before).
* diffusers: FluxPipeline resets the stateful hooks after every call (maybe_free_model_hooks), and keys state by its
  cache_context, but FasterCache and PyramidAttentionBroadcast keep one state per hooked module for both CFG calls:
  with skip range 2 the "uncond" call reuses the attention the "cond" call just computed. TaylorSeerCacheConfig's
  default identifiers hook only the attention modules on FLUX (a single block's proj_mlp and proj_out still run);
  the "sub-layers" rows hook attn / ff / ff_context of the double blocks and the whole single blocks. MagCache needs
  per-model magnitude ratios: calibrated here with `MagCacheConfig(calibrate=True)` on held-out seeds (the mean of
  the "cond" and "uncond" ratios it reports), as its docs say. `disable_cache()` leaves an empty `_diffusers_hook`
  and the original bound `forward` on every hooked module; this script deletes them.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from diffusers_side_by_side import L2C_PLANS, Parser, UsageError, _ci, _list, _plan_spec, drop_hook_leftovers  # noqa
from diffusers_side_by_side import check_restored, quality, quiet_cache_dit, snapshot  # noqa: E402

from l2c.integrations.diffusers import apply, resolve_plan  # noqa: E402
from l2c.jobs.flux_sampling import flux_mnist_latents  # noqa: E402
from l2c.jobs.generate import to_uint8  # noqa: E402
from l2c.jobs.pareto import front_rows  # noqa: E402
from l2c.jobs.sweep_store import SweepStore, json_safe  # noqa: E402
from l2c.jobs.timing import device_name, time_runs  # noqa: E402
from l2c.metrics.classifier import load_classifier  # noqa: E402
from l2c.models.flux_mnist import DEFAULT_CFG, DEFAULT_STEPS, IMAGE_SIZE, latents_to_pixels, unpack_latents  # noqa
from l2c.utils.cpu_memory import keep_freed_memory  # noqa: E402
from l2c.utils.io import atomic_output, atomic_write_json, atomic_write_text  # noqa: E402
from l2c.utils.progress import progress_bar  # noqa: E402

L2C_SCHEDULE = "l2c learned schedule"  # the family of the rows the targets are about (also "... on N steps")
CALIBRATION_SEED = 1_000_000  # MagCache calibration seeds start here: never among the measured images
DOUBLE = r"transformer_blocks\.\d+\.(attn|ff|ff_context)"
SINGLE = r"single_transformer_blocks\.\d+"


# --------------------------------------------------------------------------------------------- arguments
def build_parser() -> Parser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--images", type=int, default=1000, help="seeds 0..N-1, classes i %% 10")
    add("--batch-size", type=int, default=100, help="images per pipeline call (adaptive tools decide per call)")
    add("--steps", type=int, default=DEFAULT_STEPS)
    add("--cfg", type=float, default=DEFAULT_CFG, help="true_cfg_scale")
    add("--repeats", type=int, default=3, help="timed runs per row, interleaved with uncached")
    add("--latency-batch", type=int, default=16)
    add("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95 %% intervals")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--routers", nargs="*", default=[], metavar="FILE", help="router files from l2c train-router")
    add("--train-missing", action="store_true", help="train a missing router file NAME-<S>x.safetensors first")
    add("--fewer-steps", type=_list(int, 1, "fewer steps"), default=[14, 10, 7])
    add("--l2c-plans", nargs="*", type=_plan_spec, default=[("fora", [2, 3]), ("taylorseer-o2", [3])])
    add("--fbc-thresholds", type=_list(float, 0, "FirstBlockCache thresholds"), default=[0.1, 0.2, 0.4])
    add("--taylorseer-attn-intervals", type=_list(int, 1, "intervals"), default=[5], help="default identifiers")
    add("--taylorseer-sublayer-intervals", type=_list(int, 1, "intervals"), default=[2, 3])
    add("--taylorseer-order", type=int, default=1)
    add("--taylorseer-warmup", type=int, default=3, help="disable_cache_before_step")
    add(
        "--taylorseer-fewer-steps",
        type=_list(int, 1, "step counts"),
        default=[],
        help="the TaylorSeer (sub-layers) rows again on these step counts (the control for l2c on fewer steps)",
    )
    add("--magcache-thresholds", type=_list(float, 0, "MagCache thresholds"), default=[0.06, 0.12, 0.24])
    add("--magcache-calibration-images", type=int, default=16)
    add("--pab-ranges", type=_list(int, 2, "PAB skip ranges"), default=[2, 3])
    add("--fastercache", action=argparse.BooleanOptionalAction, default=True)
    add("--dbcache-blocks", default="F1B0", help="cache-dit Fn / Bn compute blocks of the 6, e.g. F1B0, F1B1")
    add("--dbcache-thresholds", type=_list(float, 0, "DBCache thresholds"), default=[0.16, 0.32, 0.64])
    add("--dbcache-warmups", type=_list(int, 0, "DBCache warm-ups"), default=[8, 4])
    add("--calibrators", nargs="*", default=["taylorseer", "foca", "dmd"], choices=["taylorseer", "foca", "dmd"])
    add("--calibrator-threshold", type=float, default=0.32)
    add("--calibrator-warmup", type=int, default=4)
    add("--masks", nargs="*", default=["medium", "fast", "ultra"], choices=["slow", "medium", "fast", "ultra"])
    add("--only", nargs="*", default=None, metavar="FAMILY", help="run only rows whose method starts with these")
    add("--out", default="flux_side_by_side_out")
    return p


def parse_args(argv) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "steps", "repeats", "latency_batch", "n_boot", "taylorseer_order"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.images < 2:
        raise UsageError(f"--images must be >= 2 (FID needs a covariance), got {args.images}")
    if not math.isfinite(args.cfg) or args.cfg < 1:
        raise UsageError(f"--cfg must be a finite number >= 1, got {args.cfg}")
    if args.taylorseer_warmup < 0 or args.calibrator_warmup < 0:
        raise UsageError("--taylorseer-warmup and --calibrator-warmup must be >= 0")
    if not _blocks(args.dbcache_blocks):
        raise UsageError(f"--dbcache-blocks {args.dbcache_blocks!r}: use F<n>B<m>, e.g. F1B0")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    for path in args.routers:
        if not Path(path).is_file() and not (args.train_missing and _target_speedup(path)):
            raise UsageError(f"router {path} does not exist (with --train-missing: name it NAME-<S>x.safetensors)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return args


def _blocks(spec: str) -> tuple[int, int] | None:
    import re

    m = re.fullmatch(r"F(\d+)B(\d+)", spec)
    return (int(m[1]), int(m[2])) if m and int(m[1]) >= 1 else None


def _target_speedup(path: str) -> float | None:
    import re

    m = re.search(r"-(\d+(?:\.\d+)?)x\.safetensors$", path)
    return float(m[1]) if m else None


def train_missing_routers(paths: list[str], latency_batch: int) -> None:
    import subprocess

    for path in paths:
        if not Path(path).is_file():
            # A search bounded to 4 minutes, so that the whole benchmark stays within an afternoon on a CPU; its costs
            # timed at the batch this script times (asked speed = measured speed at that batch).
            command = ["train-router", "--model", "flux-mnist", "--target-speedup", f"{_target_speedup(path):g}"]
            command += ["--search-minutes", "4", "--cost-batch", str(latency_batch)]
            print(f"training {path}: l2c {' '.join(command)}", flush=True)
            subprocess.run([sys.executable, "-m", "l2c", *command, "--out", path], check=True)


# --------------------------------------------------------------------------------------------- pipeline and loop
class Bench:
    """The pipeline under test, an untouched uncached copy for the timing reference, the prompts and the seeds."""

    def __init__(self, args):
        from diffusers import FluxPipeline

        from l2c.jobs.flux_sampling import flux_pipeline
        from l2c.models.flux_mnist import load_flux_mnist

        transformer, scheduler, self.conditioning = load_flux_mnist()
        self.device = torch.device(args.device)
        transformer = transformer.to(self.device)
        self.conditioning = {k: v.to(self.device) for k, v in self.conditioning.items()}
        self.pipe = flux_pipeline(transformer, scheduler)
        self.transformer = transformer
        # cache-dit patches FluxPipeline.__call__ on the class: this subclass keeps the original for the reference
        uncached = type("UncachedFluxPipeline", (FluxPipeline,), {"__call__": FluxPipeline.__call__})
        ref = flux_pipeline(copy.deepcopy(transformer), copy.deepcopy(scheduler))
        ref.__class__ = uncached
        self.reference = ref
        self.steps, self.cfg, self.batch_size = args.steps, args.cfg, args.batch_size
        self.seeds = list(range(args.images))
        self.classifier = load_classifier()


def sample(bench: Bench, method, seeds: list[int], reference: bool = False) -> torch.Tensor:
    """Packed latents (n, 49, 16) of FluxPipeline for `seeds`, under `method` (or the untouched reference)."""
    pipe = bench.reference if reference else bench.pipe
    steps = bench.steps if reference else method.num_steps(bench)
    with method.run(bench):
        return flux_mnist_latents(pipe, bench.conditioning, seeds, [s % 10 for s in seeds], steps, bench.cfg)


def images_of(latents: torch.Tensor) -> np.ndarray:
    return to_uint8(latents_to_pixels(unpack_latents(latents.float().cpu(), 14, 14)))  # (N, 28, 28, 1)


class WorkCounter:
    """Executed Linear multiply-adds in the blocks and executed sub-layers (see the module doc)."""

    def __init__(self, transformer):
        self.macs, self.sublayers = 0, 0
        self.handles = []
        for block in transformer.transformer_blocks:
            for end in (block.attn.to_out[0], block.ff.net[2], block.ff_context.net[2]):
                self.handles.append(end.register_forward_pre_hook(self._sublayer))
        for block in transformer.single_transformer_blocks:
            self.handles.append(block.attn.to_q.register_forward_pre_hook(self._sublayer))
        blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
        for m in (m for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear)):
            self.handles.append(m.register_forward_pre_hook(self._linear))

    def _sublayer(self, module, args):
        self.sublayers += 1

    def _linear(self, module, args):
        self.macs += args[0].numel() // module.in_features * module.in_features * module.out_features

    def remove(self):
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------------------------- the tools
class Method:
    """One row: attach() before its runs, run() around each pipeline call, detach() after. The base is uncached."""

    family, setting, config = "uncached", "-", None
    steps: int | None = None  # the sampler's step count where not the benchmark's --steps

    @property
    def key(self) -> str:
        return f"{self.family} | {self.setting}"

    def num_steps(self, bench) -> int:
        return self.steps or bench.steps

    def attach(self, bench) -> None:
        pass

    def detach(self, bench) -> None:
        pass

    @contextlib.contextmanager
    def run(self, bench):
        yield

    def after_run(self, bench) -> None:
        pass

    def stats(self) -> dict:
        return {}


class FewerSteps(Method):
    def __init__(self, steps: int):
        self.steps, self.family, self.setting = steps, "fewer steps", f"{steps} steps"


class L2C(Method):
    def __init__(self, family: str, setting: str, router_or_plan, config: str, steps: int | None = None):
        self.family, self.setting, self.target, self.config = family, setting, router_or_plan, config
        self.steps = steps

    def attach(self, bench):
        self.handle = apply(bench.pipe, self.target)  # steps counted from the pipeline's own scheduler

    def detach(self, bench):
        self.handle.remove()


class DiffusersHook(Method):
    """transformer.enable_cache(config) / disable_cache(), as CacheMixin offers them."""

    def __init__(self, family: str, setting: str, make_config, steps: int | None = None):
        self.family, self.setting, self.make_config, self.steps = family, setting, make_config, steps

    def attach(self, bench):
        config = self.make_config(bench)
        self.config = repr(config).replace("\n", " ")
        bench.transformer.enable_cache(config)

    def detach(self, bench):
        bench.transformer.disable_cache()
        drop_hook_leftovers(bench.transformer)


class CacheDiT(Method):
    def __init__(self, cache_dit, family: str, setting: str, cache_kwargs: dict, calibrator=None):
        self.cd, self.family, self.setting = cache_dit, family, setting
        self.cache_kwargs, self.calibrator, self.cached = cache_kwargs, calibrator, []

    def attach(self, bench):
        quiet_cache_dit()
        cache = self.cd.DBCacheConfig(**self.cache_kwargs)
        calibrator = self.calibrator() if self.calibrator else None
        self.config = f"{cache!r}; calibrator {calibrator!r}"
        self.children = list(bench.transformer._modules)
        self.cd.enable_cache(bench.pipe, cache_config=cache, calibrator_config=calibrator)

    def after_run(self, bench):
        summaries = self.cd.summary(bench.pipe, logging=False)
        self.cached.append(sum(len(s.cached_steps or []) for s in summaries))

    def detach(self, bench):
        t = bench.transformer
        self.cd.disable_cache(bench.pipe)
        # FluxPatchFunctor's patched forwards stay as instance attributes after disable_cache
        for module in [t, *t.single_transformer_blocks, *t.transformer_blocks]:
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_is_patched", None)
        # Each cached forward re-adds `transformer_blocks` as the last child (unittest.mock.patch.object); diffusers'
        # MagCache takes the first and last block lists in child order, so restore it.
        t._modules = {name: t._modules[name] for name in self.children}

    def stats(self):
        return {"cache_dit_cached_steps_per_call": float(np.mean(self.cached)) if self.cached else None}


def magcache_ratios(bench, images: int) -> list[float]:
    """MagCache's calibration run on held-out seeds: the mean of the ratios it reports for "cond" and "uncond"."""
    from diffusers.hooks import MagCacheConfig

    records = []

    class Grab(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith("MagCache Calibration Results:"):
                records.append(ast.literal_eval(msg.split(":", 1)[1].strip()))

    log = logging.getLogger("diffusers.hooks.mag_cache")
    level, handler = log.level, Grab()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    bench.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=bench.steps))
    try:
        seeds = list(range(CALIBRATION_SEED, CALIBRATION_SEED + images))
        with contextlib.redirect_stdout(io.StringIO()):  # it also prints the ratios
            sample(bench, Method(), seeds)
    finally:
        bench.transformer.disable_cache()
        drop_hook_leftovers(bench.transformer)
        log.removeHandler(handler)
        log.setLevel(level)
    if not records:
        raise RuntimeError("MagCache calibration reported no ratios")
    return np.mean(np.asarray(records, dtype=np.float64), axis=0).round(5).tolist()


# --------------------------------------------------------------------------------------------- the rows
def l2c_rows(args, bench) -> list[Method]:
    from l2c.cache.layout import sublayers

    S, L = bench.steps, len(sublayers(bench.transformer))
    rows = []
    for path in args.routers:
        plan = resolve_plan(path)
        if plan.num_sublayers != L:
            raise ValueError(f"router {path} plans {plan.num_sublayers} sub-layers, not flux-mnist's {L}")
        # A schedule searched on another step count runs the sampler at its own count: caching on fewer steps.
        if plan.num_steps == S:
            rows.append(L2C(L2C_SCHEDULE, Path(path).name, str(path), Path(path).name))
        else:
            family = f"{L2C_SCHEDULE} on {plan.num_steps} steps"
            rows.append(L2C(family, Path(path).name, str(path), Path(path).name, steps=plan.num_steps))
    names = {
        "fora": "l2c FORA plan",
        "taylorseer-o1": "l2c TaylorSeer-o1 plan",
        "taylorseer-o2": "l2c TaylorSeer-o2 plan",
    }
    for name, intervals in args.l2c_plans:
        rows += [L2C(names[name], f"interval {n}", L2C_PLANS[name](S, L, n), f"{name} n={n}") for n in intervals]
    return rows


def diffusers_rows(args, bench) -> list[Method]:
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    now = lambda: bench.pipe.current_timestep  # noqa: E731  (FasterCache / PAB read the pipeline's timestep)
    rows = [
        DiffusersHook("diffusers FirstBlockCache", f"threshold {r:g}", lambda b, r=r: FirstBlockCacheConfig(r))
        for r in args.fbc_thresholds
    ]
    o, w = args.taylorseer_order, args.taylorseer_warmup

    def taylorseer(n, identifiers):
        return lambda b: TaylorSeerCacheConfig(
            cache_interval=n,
            max_order=o,
            disable_cache_before_step=w,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=identifiers,
        )

    for n in args.taylorseer_attn_intervals:
        rows.append(DiffusersHook("diffusers TaylorSeer (attention)", f"interval {n} order {o}", taylorseer(n, None)))
    for n in args.taylorseer_sublayer_intervals:
        setting = f"interval {n} order {o}"
        rows.append(DiffusersHook("diffusers TaylorSeer (sub-layers)", setting, taylorseer(n, [DOUBLE, SINGLE])))
    for steps in args.taylorseer_fewer_steps:
        family = f"diffusers TaylorSeer (sub-layers) on {steps} steps"
        for n in args.taylorseer_sublayer_intervals:
            make = taylorseer(n, [DOUBLE, SINGLE])
            rows.append(DiffusersHook(family, f"interval {n} order {o}", make, steps=steps))
    ratios = {}

    def magcache(r):
        def make(b):
            if "r" not in ratios:
                ratios["r"] = magcache_ratios(b, args.magcache_calibration_images)
            return MagCacheConfig(threshold=r, num_inference_steps=b.steps, mag_ratios=ratios["r"])

        return make

    rows += [DiffusersHook("diffusers MagCache", f"threshold {r:g}", magcache(r)) for r in args.magcache_thresholds]
    # The configuration of CacheMixin.enable_cache's docstring, with FLUX's timestep. is_guidance_distilled=True: its
    # CFG part expects one batched [uncond; cond] call and would split FluxPipeline's separate "cond" batch in two.
    if args.fastercache:
        rows.append(
            DiffusersHook(
                "diffusers FasterCache",
                "docs example, is_guidance_distilled=True",
                lambda b: FasterCacheConfig(
                    spatial_attention_block_skip_range=2,
                    spatial_attention_timestep_skip_range=(-1, 681),
                    current_timestep_callback=now,
                    attention_weight_callback=lambda _: 0.3,
                    unconditional_batch_skip_range=5,
                    unconditional_batch_timestep_skip_range=(-1, 781),
                    tensor_format="BFCHW",
                    is_guidance_distilled=True,
                ),
            )
        )
    for n in args.pab_ranges:
        rows.append(
            DiffusersHook(
                "diffusers PAB",
                f"spatial skip range {n}",
                lambda b, n=n: PyramidAttentionBroadcastConfig(
                    spatial_attention_block_skip_range=n,
                    spatial_attention_timestep_skip_range=(100, 800),
                    current_timestep_callback=now,
                ),
            )
        )
    return rows


def cache_dit_rows(args, bench, notes: list[str]) -> list[Method]:
    import os

    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # read at import: cache-dit logs every attach otherwise
    try:
        import cache_dit
    except ImportError as e:
        notes.append(f"cache-dit rows skipped: cannot import cache_dit ({e}); pip install 'l2c[cache-dit]'")
        return []
    fn, bn = _blocks(args.dbcache_blocks)
    base = dict(Fn_compute_blocks=fn, Bn_compute_blocks=bn, num_inference_steps=bench.steps)
    rows = []
    for w in args.dbcache_warmups:
        for r in args.dbcache_thresholds:
            kw = dict(base, residual_diff_threshold=r, max_warmup_steps=w)
            rows.append(CacheDiT(cache_dit, "cache-dit DBCache", f"{args.dbcache_blocks} R{r:g} warmup {w}", kw))
    calibrators = {
        "taylorseer": ("TaylorSeer", lambda: cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1)),
        "foca": ("FoCa", lambda: cache_dit.FoCaCalibratorConfig()),
        "dmd": ("DMD", lambda: cache_dit.DMDCalibratorConfig()),
    }
    r, w = args.calibrator_threshold, args.calibrator_warmup
    for name in args.calibrators:
        label, make = calibrators[name]
        kw = dict(base, residual_diff_threshold=r, max_warmup_steps=w)
        rows.append(
            CacheDiT(cache_dit, f"cache-dit DBCache+{label}", f"{args.dbcache_blocks} R{r:g} warmup {w}", kw, make)
        )
    for policy in args.masks:
        mask = cache_dit.steps_mask(mask_policy=policy, total_steps=bench.steps)
        kw = dict(base, steps_computation_mask=mask, steps_computation_policy="static")
        rows.append(CacheDiT(cache_dit, "cache-dit steps mask", f"{policy} ({sum(mask)}/{len(mask)} steps)", kw))
    return rows


def build_rows(args, bench) -> tuple[list[Method], list[str]]:
    notes: list[str] = []
    rows = [Method(), *(FewerSteps(n) for n in args.fewer_steps)]
    rows += l2c_rows(args, bench) + diffusers_rows(args, bench) + cache_dit_rows(args, bench, notes)
    if args.only is not None:
        rows = [m for m in rows if m.family == "uncached" or any(m.family.startswith(f) for f in args.only)]
    keys = [m.key for m in rows]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two rows share a name: {sorted(k for k in keys if keys.count(k) > 1)[:2]}")
    return rows, notes


# --------------------------------------------------------------------------------------------- measuring a row
def sample_all(bench: Bench, method: Method, bar=None) -> tuple[torch.Tensor, dict]:
    """(latents (N, 49, 16) on the CPU, work per image): each batch is one pipeline call."""
    counter, out, sublayers = WorkCounter(bench.transformer), [], 0
    try:
        for start in range(0, len(bench.seeds), bench.batch_size):
            seeds = bench.seeds[start : start + bench.batch_size]
            before = counter.sublayers
            out.append(sample(bench, method, seeds).float().cpu())
            sublayers += (counter.sublayers - before) * len(seeds)  # one call serves every image of the batch
            method.after_run(bench)
            if bar is not None:
                bar.update(len(seeds))
    finally:
        counter.remove()
    n = len(bench.seeds)
    return torch.cat(out), {"linear_macs_per_image": counter.macs / n, "sublayers_per_image": sublayers / n}


def latency(bench: Bench, method: Method, batch: int, repeats: int) -> dict:
    seeds = bench.seeds[:batch]
    fns = {"reference": lambda: sample(bench, Method(), seeds, True), "row": lambda: sample(bench, method, seeds)}
    t = time_runs(fns, repeats=repeats, warmup=0, device=bench.device)  # both ran before: see run_rows
    row, ref = t["row"], t["reference"]
    return {
        "latency_s": row["median_s"],
        "latency_runs_s": row["runs"],
        "latency_ref_s": ref["median_s"],
        "latency_batch": len(seeds),
        "speedup": ref["median_s"] / row["median_s"],
    }


def measure(bench: Bench, method: Method, ref_latents, args, bar=None) -> tuple[dict, torch.Tensor]:
    """One row; ref_latents: the uncached latents (None for the uncached row itself)."""
    t0 = time.perf_counter()
    method.attach(bench)
    try:
        x, work = sample_all(bench, method, bar)
        timing = latency(bench, method, min(args.latency_batch, len(bench.seeds)), args.repeats)
    finally:
        method.detach(bench)
    ref = x if ref_latents is None else ref_latents
    images, ref_images = images_of(x), images_of(ref)
    row = {
        "key": method.key,
        "method": method.family,
        "setting": method.setting,
        "config": method.config,
        **timing,
        **work,
        # the DiT side by side's metrics: bootstrap FID, class accuracy, paired PSNR (no 10k x 10k precision / recall)
        **quality(images, ref_images, np.arange(len(images)) % 10, bench.classifier, args.n_boot),
        "identical_to_uncached": bool(torch.equal(x, ref)),
        "images": len(bench.seeds),
        "steps": method.num_steps(bench),
        "row_seconds": time.perf_counter() - t0,
        **method.stats(),
    }
    return row, x


class RowStore(SweepStore):
    """SweepStore's atomic record and settings check, with rows keyed by their name (family | setting)."""

    def done_key(self, key: str) -> bool:
        return any(r.get("key") == key for r in self.rows)


def settings(args) -> dict:
    keep = ("images", "batch_size", "steps", "cfg", "repeats", "latency_batch", "n_boot", "device")
    return {k: getattr(args, k) for k in keep}


def reference_latents(store: RowStore):
    saved = store.load_reference()
    return None if saved is None else torch.from_numpy(saved)


def run_rows(bench: Bench, methods: list[Method], args, store: RowStore) -> dict:
    before = snapshot(bench.transformer)
    ref = reference_latents(store)
    if ref is None and store.rows:
        raise ValueError(f"{store.path} has rows but no {store.reference_path.name}: start a new --out")
    todo = [m for m in methods if not store.done_key(m.key)]
    print(f"{len(methods) - len(todo)} of {len(methods)} rows already in {store.path}", flush=True)
    if todo:  # the reference's one-time costs; each row's own pipeline has just sampled every image before its timing
        sample(bench, Method(), bench.seeds[: args.latency_batch], reference=True)
    with progress_bar(total=len(todo) * len(bench.seeds), desc="flux side by side", unit="img") as bar:
        for method in todo:
            bar.set_postfix_str(method.key)
            row, x = measure(bench, method, ref, args, bar)
            check_restored(bench.transformer, before, method)
            if ref is None:
                ref = x
                store.save_reference(x.numpy())
            store.append(row)
            print(
                f"{row['key']}: speedup {row['speedup']:.2f}x, FID {row['fid']:.2f}, PSNR {row['psnr']:.1f} dB, "
                f"linear work {row['linear_macs_per_image']:.3g}, {row['row_seconds']:.0f} s",
                flush=True,
            )
    return recheck_uncached(bench, ref)


def recheck_uncached(bench: Bench, first: torch.Tensor) -> dict:
    """The first uncached batch again, on the pipeline every tool was attached to and removed from."""
    seeds = bench.seeds[: bench.batch_size]
    again = sample(bench, Method(), seeds).float().cpu()
    diff = float((again - first[: len(seeds)]).abs().max())
    return {"identical": bool(torch.equal(again, first[: len(seeds)])), "max_abs_diff": diff, "images": len(seeds)}


# --------------------------------------------------------------------------------------------- outputs
def table(rows: list[dict]) -> str:
    head = (
        "| method | setting | linear work | sub-layers run | latency (s) | speedup | MNIST-FID [95 % CI] "
        "| class acc. | PSNR vs uncached, dB [95 % CI] |\n|" + "---|" * 9
    )
    base = next((r for r in rows if r["method"] == "uncached"), None)
    lines = [head]
    for r in rows:
        setting = r["setting"]
        if r.get("cache_dit_cached_steps_per_call") is not None:
            setting += f" (cached {r['cache_dit_cached_steps_per_call']:.1f} steps/call)"
        cells = [
            r["method"],
            setting,
            f"{r['linear_macs_per_image'] / base['linear_macs_per_image']:.2f}" if base else "–",
            f"{r['sublayers_per_image'] / base['sublayers_per_image']:.2f}" if base else "–",
            f"{r['latency_s']:.3f}",
            f"{r['speedup']:.2f}x",
            _ci(r["fid"], r["fid_ci"], ".2f"),
            f"{100 * r['accuracy']:.1f} %",
            "∞ (same images)" if r["identical_to_uncached"] else _ci(r["psnr"], r["psnr_ci"], ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5))
    families = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "uncached"]
    colors, markers = plt.get_cmap("tab20").colors, "os^vD<>phX*P"
    base = next((r for r in rows if r["method"] == "uncached"), None)
    for ax, key, label in zip(axes, ("fid", "psnr"), ("MNIST-FID (lower is better)", "PSNR vs uncached, dB")):
        if base is not None and base.get(key) is not None and math.isfinite(base[key]):
            ax.axhline(base[key], color="k", lw=0.8, ls=":", label="uncached")
        others = 0
        for f in families:
            pts = sorted((r["speedup"], r[key]) for r in rows if r["method"] == f and r.get(key) is not None)
            pts = [p for p in pts if math.isfinite(p[1])]
            if not pts:
                continue
            ours = f.startswith("l2c")
            style = dict(
                color={L2C_SCHEDULE: "crimson"}.get(f, "darkred" if f.startswith(L2C_SCHEDULE) else None),
                lw=2.5 if ours else 0.8,
                ms=7 if ours else 4,
                alpha=1.0 if ours else 0.75,
                zorder=3 if ours else 2,
            )
            if style["color"] is None:
                style["color"] = colors[(2 * others) % 20]
                others += 1
            ax.plot(*zip(*pts), marker=markers[families.index(f) % len(markers)], label=f, **style)
        finite = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        front = sorted(front_rows(finite, key), key=lambda r: r["speedup"])
        if front:
            ax.plot([r["speedup"] for r in front], [r[key] for r in front], "k--", lw=1, alpha=0.5, label="Pareto")
        ax.set(xlabel="measured speedup", ylabel=label, yscale="log" if key == "fid" else "linear")
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()  # below both panels: the points fill the panels
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _competitor(r: dict) -> bool:
    return r["method"].startswith(("diffusers", "cache-dit"))


def targets(rows: list[dict]) -> list[str]:
    """The comparison's questions, answered from the rows: who is on each Pareto front, the fastest row of each
    method within 5 % of the uncached FID, and each l2c learned schedule's PSNR against the best competitor row
    (diffusers' hooks and cache-dit) at equal measured speed: at least 0.9 times its speedup (timing noise on a
    shared CPU is about ±10 %)."""
    base = next((r for r in rows if r["method"] == "uncached"), None)
    if base is None:
        return []
    lines = []
    for key in ("fid", "psnr"):
        finite = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        front = sorted(front_rows(finite, key), key=lambda r: r["speedup"])
        lines.append(f"{key.upper()} Pareto front: " + "; ".join(f"{r['key']} ({r['speedup']:.2f}x)" for r in front))
    limit = 1.05 * base["fid"]
    best: dict[str, dict] = {}
    for r in rows:
        if (
            r["method"] != "uncached"
            and r["fid"] <= limit
            and r["speedup"] > best.get(r["method"], {}).get("speedup", 0)
        ):
            best[r["method"]] = r
    ranked = sorted(best.values(), key=lambda r: -r["speedup"])
    lines.append(
        f"fastest row of each method at FID <= {limit:.2f} (uncached + 5 %): "
        + "; ".join(f"{r['key']} {r['speedup']:.2f}x (FID {r['fid']:.2f})" for r in ranked)
    )
    for r in (r for r in rows if r["method"].startswith(L2C_SCHEDULE) and r.get("psnr") is not None):
        rivals = [
            c for c in rows if _competitor(c) and c["speedup"] >= 0.9 * r["speedup"] and c.get("psnr") is not None
        ]
        if not rivals:
            lines.append(
                f"{r['key']}: {r['speedup']:.2f}x, PSNR {r['psnr']:.1f} dB; no competitor row reaches 0.9x its speed"
            )
            continue
        rival = max(rivals, key=lambda c: c["psnr"])
        lines.append(
            f"{r['key']}: {r['speedup']:.2f}x, PSNR {r['psnr']:.1f} dB; best competitor at >= 0.9x its speed: "
            f"{rival['key']} {rival['speedup']:.2f}x, {rival['psnr']:.1f} dB ({r['psnr'] - rival['psnr']:+.1f} dB)"
        )
    return lines


def write_outputs(out: Path, rows: list[dict], report: dict) -> None:
    atomic_write_json(json_safe({**report, "rows": rows}), out / "side_by_side.json")
    s = report["settings"]
    header = (
        f"## flux-mnist through FluxPipeline: {s['images']} images, {s['steps']} steps, true CFG {s['cfg']}, "
        f"latency of {s['latency_batch']} images x {s['repeats']} interleaved runs on {report['device']}\n"
    )
    notes = "\n".join(f"* {n}" for n in report["notes"])
    recheck = report["uncached_recheck"]
    verdict = "bit-identical" if recheck["identical"] else f"DIFFERENT (max |Δ| {recheck['max_abs_diff']:.3g})"
    text = (
        f"{header}\n{table(rows)}\n\n{notes}\n* uncached re-run of {recheck['images']} images after every "
        f"tool was removed: {verdict}\n\n### Targets\n\n" + "".join(f"* {line}\n" for line in targets(rows))
    )
    atomic_write_text(text, out / "side_by_side.md")
    plot(rows, out / "side_by_side.png", f"flux-mnist, FluxPipeline {s['steps']} steps, true CFG {s['cfg']}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        store = RowStore(args.out, settings(args))
    except (ValueError, OSError) as e:  # bad input: one line saying what, before any sampling
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"flux_side_by_side: error: {message}", file=sys.stderr)
        return 2
    if args.train_missing:
        train_missing_routers(args.routers, args.latency_batch)
    keep_freed_memory()  # as the `l2c` command does on a CPU
    bench = Bench(args)
    methods, notes = build_rows(args, bench)
    with torch.no_grad():
        recheck = run_rows(bench, methods, args, store)
    wanted = {m.key for m in methods}
    rows = [r for r in store.rows if r["key"] in wanted]
    report = {
        "settings": settings(args),
        "device": device_name(bench.device),
        "notes": notes,
        "uncached_recheck": recheck,
        "torch_threads": torch.get_num_threads(),
    }
    write_outputs(Path(args.out), rows, report)
    print(table(rows))
    print(f"uncached re-run bit-identical to the first: {recheck['identical']}")
    if not recheck["identical"]:
        print(f"error: the uncached re-run differs (max |Δ| {recheck['max_abs_diff']:.3g})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
