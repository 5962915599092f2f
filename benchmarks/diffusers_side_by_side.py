"""l2c, cache-dit and diffusers' own cache hooks side by side on one diffusers DiT: same seeds, one process.

    python benchmarks/diffusers_side_by_side.py [--images 1000] [--steps 20] [--routers R.safetensors ...]
        [--l2c-plans fora=2,3 taylorseer-o2=3,4] [--dbcache-thresholds 0.05,0.1,0.2,0.3]
        [--fbc-thresholds 0.05,0.1,0.2,0.3] [--methods l2c cache-dit diffusers] [--out side_by_side_out]

The model is the bundled dit-mnist converted in memory to diffusers' DiTTransformer2DModel (or --model, a folder
written by `l2c export-diffusers`). It is sampled by the loop a diffusers user writes for a pixel-space DiT:
DDIMScheduler (its default "leading" spacing), one doubled batch [x; x] with labels [y; null] per step, guidance
ε_u + w (ε_c − ε_u) on every channel (w = 1.5; a learned-sigma model's extra channels are dropped). Image i has seed
i (l2c's per-image StackedRandomGenerator, as `l2c sample` draws it) and class i % 10, whatever the batch.

Rows: uncached; l2c (`l2c.integrations.diffusers.apply` with router files and the training-free FORA / TaylorSeer
plans); cache-dit DBCache (F1B0) with and without its TaylorSeer calibrator; diffusers' FirstBlockCache and
TaylorSeer hooks. Each row: every image in batches (executed sub-layers counted, quality: MNIST-FID with a 95 %
bootstrap interval, class accuracy, PSNR against the uncached images of the same seeds), then the latency of one
batch, interleaved with an untouched copy of the transformer run uncached (l2c.jobs.timing.time_runs), so
speedup = median(uncached) / median(row) comes from the same interleaving. After the last row the uncached run is
repeated on the transformer every method was attached to and removed from; it must be bit-identical to the first.

Executed sub-layers are counted by forward pre-hooks on the last Linear of every block's `attn1` (`to_out.0`) and
`ff` (`net.2`). Hooks on `attn1` / `ff` themselves would also count the calls l2c and diffusers' TaylorSeer answer
from their cache: both replace the sub-layer's `forward`, and PyTorch runs a module's hooks around whatever
`forward` is. The quality metrics are the sweep's (l2c.jobs.sweep) building blocks: bootstrap_fid, class accuracy
and psnr_with_ci; precision / recall are left out (each row would compare 10k x 10k reference distances).

What the libraries need on a bare DiTTransformer2DModel (cache-dit 1.5.3, diffusers 0.42.1):

cache-dit
* `cache_dit.enable_cache(transformer, cache_config=DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0,
  residual_diff_threshold=r, max_warmup_steps=w, num_inference_steps=S), calibrator_config=None or
  TaylorSeerCalibratorConfig(taylorseer_order=o))`. No pipeline or BlockAdapter is needed: cache-dit matches the
  class name against its registered "DiT" adapter (ForwardPattern.Pattern_3, DiTPatchFunctor) and wraps the module
  in a FakeDiffusionPipeline. It returns a list, not the module.
* That transformer-only context is persistent: no pipeline `__call__` resets it. num_inference_steps=S alone resets
  it one call late: the next run's first call still runs in the old context (past the warm-up, with the last run's
  residuals) and every later run is shifted by one more call. Measured on 10 steps, R0.3: the second and third runs
  on the same seeds differed from the first by up to 1.2 and 1.6 on [-1, 1] pixels. So every run here starts with
  `cache_dit.refresh_context(transformer, cache_config=..., calibrator_config=...)`, and then runs repeat exactly.
* Warm-up: DBCache never caches the first `max_warmup_steps` steps (cache-dit's default 8, kept as --dbcache-warmup).
  Thresholds <= 0 never cache, >= 1 always cache after the warm-up (cache-dit's own conventions).
* `cache_dit.disable_cache(transformer)` restores the forward it wrapped, which is DiTPatchFunctor's: the patched
  `forward` stays an instance attribute and block 0's embedder stays registered as the submodule `_norm1_emb`
  (state_dict() gains `_norm1_emb.*` keys). This script deletes both (and `_is_patched`). Every cached forward also
  moves `transformer_blocks` to the end of the module's children (unittest.mock.patch.object deletes and re-adds
  it), so state_dict() lists those keys last from then on: same names and values, another order.
* Cached steps per run: `cache_dit.summary(transformer, logging=False)[0].cached_steps`.

diffusers hooks
* `apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=r))` and `apply_taylorseer_cache(transformer,
  TaylorSeerCacheConfig(cache_interval=N, max_order=o, disable_cache_before_step=w, taylor_factors_dtype=float32,
  cache_identifiers=[r"transformer_blocks\\.\\d+\\.attn1", r"transformer_blocks\\.\\d+\\.ff"]))`. TaylorSeer's
  default identifiers ("^transformer_blocks.*attn", matched with re.fullmatch) hook nothing on DiT, whose sub-layers
  are `attn1` and `ff`: it then samples uncached without a warning (the script counts and reports it). Float32 Taylor
  factors because the model is float32 (the default bfloat16 would add rounding of its own).
* Their state lives under a cache context that only CacheMixin models set; DiTTransformer2DModel is not one
  ("ValueError: No cache context is set"). Each run calls `HookRegistry.check_if_exists_or_initialize(transformer)
  .reset_stateful_hooks()` (which also clears the context) and then runs the loop inside diffusers' own
  `CacheMixin.cache_context(transformer, "cfg-batch")`.
* The registry caches its list of child registries: after adding or removing hooks below the transformer, call
  `registry.invalidate_child_registries_cache()`, or hooks added later never see the context.
* Removal: `registry.remove_hook(name, recurse=True)` with the names CacheMixin.disable_cache uses
  ("fbc_leader_block_hook", "fbc_block_hook", "taylorseer_cache"). It leaves the original bound `forward` as an
  instance attribute and an empty `_diffusers_hook` on every hooked module; this script deletes those.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2c.cache.schedules import fora, taylorseer  # noqa: E402
from l2c.integrations.diffusers import apply, ddim_scheduler_config, resolve_plan  # noqa: E402
from l2c.jobs.generate import to_uint8  # noqa: E402
from l2c.jobs.sweep_report import plot_sweep  # noqa: E402
from l2c.jobs.sweep_store import json_safe  # noqa: E402
from l2c.jobs.timing import device_name, time_runs  # noqa: E402
from l2c.metrics.bootstrap import bootstrap_fid, psnr_with_ci  # noqa: E402
from l2c.metrics.classifier import classify, load_classifier  # noqa: E402
from l2c.metrics.report import reference_statistics  # noqa: E402
from l2c.metrics.scores import class_accuracy  # noqa: E402
from l2c.sampling.seeds import StackedRandomGenerator  # noqa: E402
from l2c.utils.cpu_memory import keep_freed_memory  # noqa: E402
from l2c.utils.io import atomic_output, atomic_write_json, atomic_write_text  # noqa: E402

FAMILIES = ("l2c", "cache-dit", "diffusers")
L2C_PLANS = {
    "fora": lambda S, L, n: fora(S, L, n),
    "taylorseer-o1": lambda S, L, n: taylorseer(S, L, n, 1),
    "taylorseer-o2": lambda S, L, n: taylorseer(S, L, n, 2),
}
DIT_SUBLAYERS = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]


class UsageError(ValueError):
    pass


# --------------------------------------------------------------------------------------------- arguments
class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr and exit code 2 (main), as every l2c command answers bad input
        raise UsageError(message)


def _list(kind, low: float, what: str):
    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: cannot parse {text!r}; use e.g. 0.05,0.1") from None
        bad = [v for v in values if not math.isfinite(v) or v < low]
        if bad:
            raise argparse.ArgumentTypeError(f"{what} must be finite numbers >= {low:g}, got {bad[0]}")
        return values

    return parse


def _plan_spec(text: str) -> tuple[str, list[int]]:
    name, _, intervals = text.partition("=")
    if name not in L2C_PLANS or not intervals:
        raise argparse.ArgumentTypeError(
            f"l2c plan {text!r}: use NAME=INTERVALS with NAME one of {', '.join(L2C_PLANS)}"
        )
    return name, _list(int, 1, f"{name} intervals")(intervals)


def build_parser() -> Parser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="seeds 0..N-1, classes i %% 10")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (the plans and routers must have as many)")
    p.add_argument("--guidance", type=float, default=1.5, help="w of ε_u + w (ε_c − ε_u)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row, interleaved with uncached")
    p.add_argument("--latency-batch", type=int, default=64)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95 %% intervals")
    p.add_argument("--model", default=None, help="a diffusers folder from `l2c export-diffusers` (default: dit-mnist)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="families to run")
    p.add_argument("--routers", nargs="+", default=[], metavar="FILE", help="router files from l2c train-router")
    p.add_argument("--router-thresholds", type=_list(float, 0, "router thresholds"), default=None)
    p.add_argument("--l2c-plans", nargs="*", type=_plan_spec, default=[("fora", [2, 3]), ("taylorseer-o2", [3, 4])])
    p.add_argument("--dbcache-thresholds", type=_list(float, 0, "DBCache thresholds"), default=[0.05, 0.1, 0.2, 0.3])
    p.add_argument("--dbcache-warmup", type=int, default=8, help="cache-dit max_warmup_steps (its default)")
    p.add_argument("--dbcache-taylorseer-order", type=int, default=1)
    p.add_argument(
        "--fbc-thresholds", type=_list(float, 0, "FirstBlockCache thresholds"), default=[0.05, 0.1, 0.2, 0.3]
    )
    p.add_argument("--diffusers-taylorseer-intervals", type=_list(int, 1, "TaylorSeer intervals"), default=[2, 3])
    p.add_argument("--diffusers-taylorseer-order", type=int, default=1)
    p.add_argument("--diffusers-taylorseer-warmup", type=int, default=3, help="disable_cache_before_step (default 3)")
    p.add_argument("--out", default="side_by_side_out")
    return p


def parse_args(argv) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    positive = ("images", "batch_size", "steps", "repeats", "latency_batch", "n_boot")
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.images < 2:
        raise UsageError(f"--images must be >= 2 (FID needs a covariance), got {args.images}")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise UsageError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    for name in ("dbcache_warmup", "diffusers_taylorseer_warmup"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("dbcache_taylorseer_order", "diffusers_taylorseer_order"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.router_thresholds and max(args.router_thresholds) > 1:
        raise UsageError(f"--router-thresholds are in [0, 1], got {max(args.router_thresholds)}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device {args.device!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return args


# --------------------------------------------------------------------------------------------- model and loop
@dataclass
class Bench:
    """What every row shares: the transformer under test, an untouched copy for the timing reference, the seeds."""

    transformer: torch.nn.Module
    reference: torch.nn.Module  # never attached to: the uncached side of every interleaved timing
    scheduler: object
    reference_scheduler: object
    steps: int
    guidance: float
    seeds: list[int]
    classes: list[int]
    batch_size: int
    device: torch.device
    channels: int = field(init=False)
    size: int = field(init=False)
    null_class: int = field(init=False)

    def __post_init__(self):
        cfg = self.transformer.config
        self.channels, self.size, self.null_class = cfg.in_channels, cfg.sample_size, cfg.num_embeds_ada_norm

    @property
    def num_sublayers(self) -> int:
        return 2 * len(self.transformer.transformer_blocks)


def load_transformer(model_dir: str | None):
    from l2c.integrations.diffusers import dit_to_diffusers, load_diffusers_folder
    from l2c.models.checkpoints import load_model

    if model_dir is None:
        model, meta = load_model("dit-mnist")
        return dit_to_diffusers(model), meta
    return load_diffusers_folder(model_dir, as_dit=False)


def setup_bench(args) -> Bench:
    import copy

    from diffusers import DDIMScheduler

    transformer, meta = load_transformer(args.model)
    cfg = transformer.config
    if (cfg.in_channels, cfg.sample_size) != (1, 28):
        raise ValueError(f"the MNIST metrics need a 1x28x28 model, got {cfg.in_channels}x{cfg.sample_size}")
    device = torch.device(args.device)
    transformer = transformer.to(device).eval()
    scheduler_config = ddim_scheduler_config(meta["diffusion"])
    if args.steps > scheduler_config["num_train_timesteps"]:
        raise ValueError(f"--steps {args.steps} is more than the {scheduler_config['num_train_timesteps']} timesteps")
    classes = [i % cfg.num_embeds_ada_norm for i in range(args.images)]
    return Bench(
        transformer,
        copy.deepcopy(transformer),
        DDIMScheduler(**scheduler_config),
        DDIMScheduler(**scheduler_config),
        args.steps,
        args.guidance,
        list(range(args.images)),
        classes,
        args.batch_size,
        device,
    )


def sample(bench: Bench, method, seeds: list[int], reference: bool = False) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1]: DiTPipeline's loop without the VAE, run under `method`."""
    transformer = bench.reference if reference else bench.transformer
    scheduler = bench.reference_scheduler if reference else bench.scheduler
    n = len(seeds)
    x = StackedRandomGenerator(seeds).randn((n, bench.channels, bench.size, bench.size)).to(bench.device)
    y = torch.tensor([bench.classes[s] for s in seeds], device=bench.device)
    labels = torch.cat([y, torch.full_like(y, bench.null_class)])  # (2N,): conditional, then unconditional
    scheduler.set_timesteps(bench.steps)  # an l2c handle starts its run here
    with method.run(transformer):
        for t in scheduler.timesteps:
            out = transformer(torch.cat([x, x]), timestep=t.expand(2 * n), class_labels=labels).sample
            eps_c, eps_u = out[:, : bench.channels].chunk(2)  # (N, C, H, W) each; learned σ channels dropped
            x = scheduler.step(eps_u + bench.guidance * (eps_c - eps_u), t, x).prev_sample
    return x


class SublayerCounter:
    """Executed sub-layers: calls of the last Linear of each block's attn1 and ff (see the module doc)."""

    def __init__(self, transformer):
        self.calls = 0
        ends = [m for b in transformer.transformer_blocks for m in (b.attn1.to_out[0], b.ff.net[2])]
        self.handles = [m.register_forward_pre_hook(self._count) for m in ends]

    def _count(self, module, args):
        self.calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------------------------- methods
class Method:
    """One row: attach() before its runs, run() around each sampling run, detach() after. The base is uncached."""

    family, setting = "uncached", "-"

    def attach(self, bench: Bench) -> None:
        pass

    def detach(self, bench: Bench) -> None:
        pass

    @contextmanager
    def run(self, transformer):
        yield

    def after_run(self, transformer) -> None:  # quality pass only: read the library's own statistics
        pass

    def stats(self) -> dict:
        return {}


class L2C(Method):
    def __init__(self, family: str, setting: str, plan):
        self.family, self.setting, self.plan = family, setting, plan

    def attach(self, bench):
        # the scheduler's set_timesteps starts each run (step 0, empty cache); it is restored by remove()
        self.handle = apply(bench.transformer, self.plan, scheduler=bench.scheduler)

    def detach(self, bench):
        self.handle.remove()


class CacheDiT(Method):
    def __init__(self, cache_dit, threshold: float, order: int | None, warmup: int, steps: int):
        self.cd, self.threshold, self.order, self.warmup, self.steps = cache_dit, threshold, order, warmup, steps
        self.family = "cache-dit DBCache" + ("+TaylorSeer" if order else "")
        self.setting = f"F1B0 R{threshold:g} warmup {warmup}" + (f" order {order}" if order else "")
        self.cached: list[int] = []

    def _configs(self):  # fresh objects each time: cache-dit writes into the configs it is given
        cache = self.cd.DBCacheConfig(
            Fn_compute_blocks=1,
            Bn_compute_blocks=0,
            residual_diff_threshold=self.threshold,
            max_warmup_steps=self.warmup,
            num_inference_steps=self.steps,
        )
        calibrator = self.cd.TaylorSeerCalibratorConfig(taylorseer_order=self.order) if self.order else None
        return {"cache_config": cache, "calibrator_config": calibrator}

    def attach(self, bench):
        quiet_cache_dit()
        self.cd.enable_cache(bench.transformer, **self._configs())

    @contextmanager
    def run(self, transformer):
        self.cd.refresh_context(transformer, **self._configs())  # the persistent context is never reset otherwise
        yield

    def after_run(self, transformer):
        self.cached.append(len(self.cd.summary(transformer, logging=False)[0].cached_steps))

    def detach(self, bench):
        t = bench.transformer
        self.cd.disable_cache(t)
        t.__dict__.pop("forward", None)  # DiTPatchFunctor's forward, which disable_cache leaves in place
        t.__dict__.pop("_is_patched", None)
        if "_norm1_emb" in t._modules:
            del t._norm1_emb

    def stats(self):
        return {"cache_dit_cached_steps_per_run": statistics.mean(self.cached) if self.cached else None}


def quiet_cache_dit() -> None:
    # CACHE_DIT_LOG_LEVEL only counts before cache_dit is first imported (a test may have imported it already);
    # its loggers are created per module, some on first use, so lower every one that exists now.
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("cache_dit"):
            logging.getLogger(name).setLevel(logging.ERROR)


class DiffusersHooks(Method):
    def __init__(self, hooks, family: str, setting: str, config, hook_names: tuple[str, ...]):
        self.hooks, self.family, self.setting, self.config, self.hook_names = hooks, family, setting, config, hook_names

    def attach(self, bench):
        if isinstance(self.config, self.hooks.FirstBlockCacheConfig):
            self.hooks.apply_first_block_cache(bench.transformer, self.config)
        else:
            self.hooks.apply_taylorseer_cache(bench.transformer, self.config)
        self.registry = self.hooks.HookRegistry.check_if_exists_or_initialize(bench.transformer)
        self.registry.invalidate_child_registries_cache()

    @contextmanager
    def run(self, transformer):
        from diffusers.models.cache_utils import CacheMixin

        self.registry.reset_stateful_hooks()  # a fresh state per sampling run; this also clears the context
        with CacheMixin.cache_context(transformer, "cfg-batch"):  # the one call per step is the doubled batch
            yield

    def detach(self, bench):
        for name in self.hook_names:
            self.registry.remove_hook(name, recurse=True)
        drop_hook_leftovers(bench.transformer)


def drop_hook_leftovers(transformer) -> None:
    """Delete what diffusers' remove_hook leaves: empty registries, and `forward` rebound to the class's own."""
    for module in transformer.modules():
        registry = module.__dict__.get("_diffusers_hook")
        if registry is not None and not registry.hooks:
            del module._diffusers_hook
        forward = module.__dict__.get("forward")
        if getattr(forward, "__func__", None) is type(module).forward and getattr(forward, "__self__", None) is module:
            del module.forward


def l2c_methods(args, bench: Bench) -> list[Method]:
    S, L = bench.steps, bench.num_sublayers
    methods = []
    for name, intervals in args.l2c_plans:
        family = {"fora": "l2c FORA", "taylorseer-o1": "l2c TaylorSeer o1", "taylorseer-o2": "l2c TaylorSeer o2"}[name]
        methods += [L2C(family, f"interval {n}", L2C_PLANS[name](S, L, n)) for n in intervals]
    for path in args.routers:
        for theta in args.router_thresholds or [None]:
            plan = resolve_plan(path, theta)  # θ None: the file's own; schedule routers give their budget plan
            if plan.num_steps != S or plan.num_sublayers != L:
                raise ValueError(
                    f"router {path} makes a plan of {plan.num_steps} steps x {plan.num_sublayers} sub-layers; "
                    f"this run has {S} x {L}: use --steps {plan.num_steps} or a router trained for {S} steps"
                )
            setting = Path(path).name + ("" if theta is None else f" θ={theta:g}")
            methods.append(L2C("l2c router", setting, plan))
    return methods


def cache_dit_methods(args, bench: Bench, notes: list[str]) -> list[Method]:
    import os

    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # read at import: cache-dit logs every attach otherwise
    try:
        import cache_dit
    except ImportError as e:
        notes.append(f"cache-dit rows skipped: cannot import cache_dit ({e}); pip install 'l2c[cache-dit]'")
        return []
    order, warmup = args.dbcache_taylorseer_order, args.dbcache_warmup
    return [CacheDiT(cache_dit, r, o, warmup, bench.steps) for o in (None, order) for r in args.dbcache_thresholds]


def diffusers_methods(args, bench: Bench, notes: list[str]) -> list[Method]:
    try:
        import diffusers.hooks as hooks
        from diffusers.models.cache_utils import CacheMixin  # noqa: F401  (each run enters its cache_context)
    except ImportError as e:
        notes.append(f"diffusers hook rows skipped: cannot import diffusers.hooks ({e})")
        return []
    hooked = default_taylorseer_hooked(hooks, bench.transformer)
    notes.append(
        f"diffusers TaylorSeerCacheConfig's default identifiers hook {hooked} modules of "
        f"{type(bench.transformer).__name__}; the rows use cache_identifiers={DIT_SUBLAYERS}"
    )
    fbc = ("fbc_leader_block_hook", "fbc_block_hook")
    methods = [
        DiffusersHooks(hooks, "diffusers FirstBlockCache", f"threshold {r:g}", hooks.FirstBlockCacheConfig(r), fbc)
        for r in args.fbc_thresholds
    ]
    order, warmup = args.diffusers_taylorseer_order, args.diffusers_taylorseer_warmup
    for n in args.diffusers_taylorseer_intervals:
        config = hooks.TaylorSeerCacheConfig(
            cache_interval=n,
            max_order=order,
            disable_cache_before_step=warmup,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=DIT_SUBLAYERS,
        )
        setting = f"interval {n} order {order} warmup {warmup}"
        methods.append(DiffusersHooks(hooks, "diffusers TaylorSeer", setting, config, ("taylorseer_cache",)))
    return methods


def default_taylorseer_hooked(hooks, transformer) -> int:
    """How many modules TaylorSeer's default identifiers hook on this transformer (0 on DiT); hooks removed again."""
    hooks.apply_taylorseer_cache(transformer, hooks.TaylorSeerCacheConfig())
    hooked = [m for m in transformer.modules() if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks]
    hooks.HookRegistry.check_if_exists_or_initialize(transformer).remove_hook("taylorseer_cache", recurse=True)
    drop_hook_leftovers(transformer)
    return len(hooked)


def build_methods(args, bench: Bench) -> tuple[list[Method], list[str]]:
    methods, notes = [Method()], []
    if "l2c" in args.methods:
        methods += l2c_methods(args, bench)
    if "cache-dit" in args.methods:
        methods += cache_dit_methods(args, bench, notes)
    if "diffusers" in args.methods:
        methods += diffusers_methods(args, bench, notes)
    return methods, notes


# --------------------------------------------------------------------------------------------- measuring a row
def sample_all(bench: Bench, method: Method) -> tuple[torch.Tensor, float]:
    """(images (N, C, H, W) on the CPU, executed sub-layers per image): batches are runs, each decides for itself."""
    counter, out, executed = SublayerCounter(bench.transformer), [], 0
    try:
        for start in range(0, len(bench.seeds), bench.batch_size):
            seeds = bench.seeds[start : start + bench.batch_size]
            before = counter.calls
            out.append(sample(bench, method, seeds).cpu())
            method.after_run(bench.transformer)
            executed += (counter.calls - before) * len(seeds)  # one call serves every image of the batch
    finally:
        counter.remove()
    return torch.cat(out), executed / len(bench.seeds)


def quality(images: np.ndarray, reference: np.ndarray, classes, classifier, n_boot: int) -> dict:
    features, logits = classify(classifier, images)
    fid, lo, hi = bootstrap_fid(features, *reference_statistics(), n_boot=n_boot)
    psnr, plo, phi = psnr_with_ci(images, reference, n_boot=n_boot)
    accuracy = class_accuracy(logits, np.asarray(classes))
    return {"fid": fid, "fid_ci": [lo, hi], "accuracy": accuracy, "psnr": psnr, "psnr_ci": [plo, phi]}


def latency(bench: Bench, method: Method, batch: int, repeats: int) -> dict:
    seeds = bench.seeds[:batch]
    fns = {
        "reference": lambda: sample(bench, Method(), seeds, reference=True),
        "row": lambda: sample(bench, method, seeds),
    }
    t = time_runs(fns, repeats=repeats, warmup=1, device=bench.device)
    row, ref = t["row"], t["reference"]
    return {
        "latency_s": row["median_s"],
        "latency_runs_s": row["runs"],
        "latency_ref_s": ref["median_s"],
        "latency_batch": len(seeds),
        "speedup": ref["median_s"] / row["median_s"],
    }


def snapshot(transformer) -> tuple[list[str], list[str]]:
    """(state_dict keys, modules with an instance `forward`): what attaching and removing a cache must not change.

    Sorted keys: a cache-dit forward moves `transformer_blocks` to the end of the children (see the module doc).
    """
    forwards = [n or "(root)" for n, m in transformer.named_modules() if "forward" in m.__dict__]
    return sorted(transformer.state_dict()), forwards


def check_restored(transformer, before: tuple[list[str], list[str]], method: Method) -> None:
    # A leftover would change every later row; fail here, naming the method, rather than in the final re-check.
    keys, forwards = snapshot(transformer)
    if (keys, forwards) != before:
        raise RuntimeError(
            f"removing {method.family} ({method.setting}) left the transformer changed: state_dict keys "
            f"{'differ' if keys != before[0] else 'unchanged'}, instance forwards on {forwards[:4]}"
        )


def measure(bench: Bench, method: Method, ref, args, classifier) -> tuple[dict, torch.Tensor]:
    """One row; `ref` = (float images, uint8 images) of the uncached run, or None for the uncached row itself."""
    method.attach(bench)
    try:
        x, executed = sample_all(bench, method)
        timing = latency(bench, method, min(args.latency_batch, len(bench.seeds)), args.repeats)
    finally:
        method.detach(bench)
    images = to_uint8(x)
    ref_x, ref_images = ref if ref is not None else (x, images)
    total = bench.steps * bench.num_sublayers
    row = {
        "method": method.family,
        "setting": method.setting,
        **timing,
        "executed_per_image": executed,
        "total_per_image": total,
        "executed_fraction": executed / total,
        **quality(images, ref_images, bench.classes, classifier, args.n_boot),
        "identical_to_uncached": bool(torch.equal(x, ref_x)),
        "images": len(bench.seeds),
        "steps": bench.steps,
        **method.stats(),
    }
    return row, x


def run_rows(bench: Bench, methods: list[Method], args) -> tuple[list[dict], dict]:
    classifier = load_classifier()
    before = snapshot(bench.transformer)
    rows, ref = [], None
    bar = tqdm(methods, desc="side-by-side", unit="row")
    for method in bar:
        bar.set_postfix_str(f"{method.family} {method.setting}")
        row, x = measure(bench, method, ref, args, classifier)
        check_restored(bench.transformer, before, method)
        if ref is None:
            ref = (x, to_uint8(x))
        rows.append(row)
    return rows, recheck_uncached(bench, ref[0])


def recheck_uncached(bench: Bench, first: torch.Tensor) -> dict:
    """The uncached run again, on the transformer every method was attached to and removed from."""
    starts = range(0, len(bench.seeds), bench.batch_size)
    again = torch.cat([sample(bench, Method(), bench.seeds[i : i + bench.batch_size]).cpu() for i in starts])
    return {"identical": bool(torch.equal(again, first)), "max_abs_diff": float((again - first).abs().max())}


# --------------------------------------------------------------------------------------------- outputs
def _num(v, fmt: str) -> str:
    if v is None:
        return "–"
    return "∞" if math.isinf(v) else format(v, fmt)


def _ci(v, ci, fmt: str) -> str:
    if v is None or math.isinf(v) or not ci or ci[0] is None:
        return _num(v, fmt)
    return f"{_num(v, fmt)} [{_num(ci[0], fmt)}, {_num(ci[1], fmt)}]"


def table(rows: list[dict]) -> str:
    head = (
        "| method | setting | executed sub-layers / image | latency (s) | speedup | MNIST-FID [95 % CI] | class acc. "
        "| PSNR vs uncached, dB [95 % CI] | same images |\n|" + "---|" * 9
    )
    lines = [head]
    for r in rows:
        executed = f"{r['executed_per_image']:.1f}/{r['total_per_image']} ({r['executed_fraction']:.2f})"
        cells = [
            r["method"],
            r["setting"],
            executed,
            f"{r['latency_s']:.3f}",
            f"{r['speedup']:.2f}x",
            _ci(r["fid"], r["fid_ci"], ".2f"),
            f"{100 * r['accuracy']:.1f} %",
            _ci(r["psnr"], r["psnr_ci"], ".1f"),
            "yes" if r["identical_to_uncached"] else "no",
        ]
        if r.get("cache_dit_cached_steps_per_run") is not None:
            cells[1] += f" (cached {r['cache_dit_cached_steps_per_run']:.1f} steps/run)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(out: Path, rows: list[dict], report: dict) -> None:
    atomic_write_json(json_safe({**report, "rows": rows}), out / "side_by_side.json")
    s = report["settings"]
    header = (
        f"## Side by side on {report['model']}: {s['images']} images, DDIM {s['steps']} steps, guidance "
        f"{s['guidance']}, latency of {rows[0]['latency_batch']} images x {s['repeats']} interleaved runs "
        f"on {report['device']}\n"
    )
    notes = "\n".join(f"* {n}" for n in report["notes"])
    recheck = report["uncached_recheck"]
    verdict = "bit-identical" if recheck["identical"] else f"DIFFERENT (max |Δ| {recheck['max_abs_diff']:.3g})"
    text = f"{header}\n{table(rows)}\n\n{notes}\n* uncached re-run after every row was removed: {verdict}\n"
    atomic_write_text(text, out / "side_by_side.md")
    with atomic_output(out / "side_by_side.png") as tmp:
        plot_sweep(rows, tmp, f"{report['model']}, DDIM {s['steps']}: caching methods side by side")


def settings(args) -> dict:
    out = {k: v for k, v in vars(args).items() if k != "l2c_plans"}
    out["l2c_plans"] = [f"{name}={','.join(map(str, n))}" for name, n in args.l2c_plans]
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        bench = setup_bench(args)
        methods, notes = build_methods(args, bench)
    except (ValueError, OSError) as e:  # bad input: one line saying what, before any sampling
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"diffusers_side_by_side: error: {message}", file=sys.stderr)
        return 2
    for note in notes:
        print(note)
    keep_freed_memory()  # as the `l2c` command does on a CPU
    with torch.no_grad():
        rows, recheck = run_rows(bench, methods, args)
    report = {
        "settings": settings(args),
        "model": args.model or "dit-mnist (converted in memory)",
        "device": device_name(bench.device),
        "notes": notes,
        "uncached_recheck": recheck,
    }
    write_outputs(Path(args.out), rows, report)
    print(table(rows))
    print(f"uncached re-run bit-identical to the first: {recheck['identical']}")
    if not recheck["identical"]:
        print(
            f"error: the uncached re-run differs from the first (max |Δ| {recheck['max_abs_diff']:.3g}): "
            "a method's removal left the transformer changed",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
