"""Attach l2c's cache engine to the diffusers pipelines and transformers users already run.

    handle = apply(pipe, "router.safetensors")      # DiTPipeline, DiTTransformer2DModel, PixArtTransformer2DModel
    images = pipe(class_labels=[207], num_inference_steps=20).images
    handle.remove()                                 # the model and scheduler are exactly as before

Nothing in the pipeline changes. The step index is the number of transformer calls since the sampling run began,
counted on the host by a forward pre-hook (no `.item()` on a timestep, no host sync); a run begins when the
pipeline calls `scheduler.set_timesteps`, which `apply` wraps on the scheduler *instance* (so repeated pipeline
calls start from a clean cache). Batched guidance as DiTPipeline and PixArtAlphaPipeline run it (one doubled batch,
one transformer call per step) needs nothing more; loops that call the transformer twice per step (conditional,
then unconditional) pass `calls_per_step=2` and get two independent caches, one per call of the step.

The sub-layers are found through the same layout table as our own DiT and U-ViT (`l2c.cache.layout`), so a
router trained on our DiT applies to its converted diffusers copy unchanged (attn -> attn1, mlp -> ff).
diffusers itself is never imported here: pipelines are recognised by their `transformer` and `scheduler`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

# CacheEngine from the package, not from l2c.cache.engine: the package keeps its name if the engine module splits.
from ..cache import CacheEngine
from ..cache.layout import layout_for, sublayers
from ..cache.plan import CachePlan
from ..router import Router, load_router
from ..router.budget import router_plan
from ..sampling.samplers import SAMPLERS

DEFAULT_THRESHOLD = 0.5  # the CLI's default θ when neither --threshold nor the router file gives one


def resolve_plan(router_or_plan, threshold: float | None = None) -> CachePlan:
    """A CachePlan from a plan, a Router, or a router file path; θ from `threshold`, the file, or 0.5."""
    return _resolve(router_or_plan, threshold)[0]


def _resolve(router_or_plan, threshold: float | None) -> tuple[CachePlan, dict]:
    """(plan, the router file's metadata, {} for objects)."""
    if isinstance(router_or_plan, CachePlan):
        if threshold is not None:
            raise ValueError("threshold applies to a router, but a CachePlan was given (its choices are made)")
        return router_or_plan, {}
    meta = {}
    if isinstance(router_or_plan, (str, Path)):
        router_or_plan, meta = load_router(router_or_plan)
    if not isinstance(router_or_plan, Router):
        raise TypeError(f"expected a CachePlan, a Router or a router file path, got {type(router_or_plan).__name__}")
    if threshold is None:
        threshold = meta.get("threshold", DEFAULT_THRESHOLD)
    return router_plan(router_or_plan, meta, threshold), meta  # the alternation, or a schedule router's plan


def _check_scheduler(meta: dict, scheduler) -> None:
    """A router trained for one diffusers scheduler (train-router --sampler diffusers-*) is refused on another: its
    steps would be other timesteps under another update rule."""
    trained_for = getattr(SAMPLERS.get(meta.get("sampler")), "scheduler_class", None)
    if trained_for and scheduler is not None and type(scheduler).__name__ != trained_for:
        raise ValueError(
            f"l2c.apply: the router was trained for {trained_for} (sampler {meta['sampler']}), the pipeline runs "
            f"{type(scheduler).__name__}: train one for it (l2c train-router --sampler diffusers-...)"
        )


def _split(pipe_or_transformer) -> tuple[nn.Module, object | None]:
    """(transformer, scheduler or None): a pipeline is anything with a `transformer` module and a `scheduler`."""
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if isinstance(transformer, nn.Module) and not isinstance(pipe_or_transformer, nn.Module):
        return transformer, getattr(pipe_or_transformer, "scheduler", None)
    if isinstance(pipe_or_transformer, nn.Module):
        return pipe_or_transformer, None
    raise TypeError(
        f"apply() takes a diffusers pipeline with a .transformer or a transformer module, "
        f"got {type(pipe_or_transformer).__name__}"
    )


def _check_supported(transformer: nn.Module) -> None:
    """Fail loudly, naming what was not found: an unsupported model must never run uncached while 'cached'."""
    try:
        sublayers(transformer)
    except TypeError as e:
        raise TypeError(f"l2c.apply: unsupported transformer {type(transformer).__name__}: {e}") from None
    except (ValueError, AttributeError) as e:
        name = type(transformer).__name__
        raise ValueError(f"l2c.apply: cannot find the cacheable sub-layers of {name}: {e}") from None


class DiffusersCache:
    """What `apply` returns: the attached engine plus the step counter; `.remove()` restores everything.

    Attributes: `engine` (the CacheEngine), `plan`, `calls` (transformer calls in the current run).
    """

    def __init__(self, transformer: nn.Module, plan: CachePlan, scheduler=None, pipe=None, calls_per_step: int = 1):
        if calls_per_step < 1:
            raise ValueError(f"calls_per_step must be >= 1, got {calls_per_step}")
        _check_supported(transformer)
        self.transformer = transformer
        self.plan = plan
        self.calls_per_step = calls_per_step
        self.calls = 0
        self._pipe = pipe  # to notice `pipe.scheduler = ...` made after apply()
        self._scheduler = None
        self._wrapper = None
        self._check_chunking()
        self.engine = CacheEngine(transformer, plan)  # real skipping: reused sub-layers are not entered
        # prepend: our hook sets the step before the engine's own pre-hook counts this call as a slot.
        self._hook = transformer.register_forward_pre_hook(self._before_call, prepend=True)
        if scheduler is not None:
            try:
                self._wrap_scheduler(scheduler)
            except Exception:
                self._hook.remove()
                self.engine.detach()
                raise

    # ------------------------------------------------------------------ the step index
    def reset(self) -> None:
        """Start a new sampling run: step 0, empty cache. Automatic with a scheduler; call it yourself otherwise."""
        self.calls = 0
        self.engine.reset()

    def _before_call(self, module, args):
        current = getattr(self._pipe, "scheduler", None)
        if self._pipe is not None and current is not self._scheduler and current is not None:
            # The pipeline's scheduler was replaced after apply(): its set_timesteps (already called for this
            # run) was not wrapped, so this call is the first of a new run. Wrap the new one and start clean.
            self._wrap_scheduler(current)
            self._start_run()
        step, call_in_step = divmod(self.calls, self.calls_per_step)
        if call_in_step == 0:
            if step >= self.plan.num_steps:
                raise RuntimeError(
                    f"l2c: transformer call {self.calls + 1} would be sampling step {step}, but the cache plan "
                    f"covers {self.plan.num_steps} steps (x {self.calls_per_step} calls): the loop runs more "
                    "model calls than the plan has steps. Use a plan made for this many steps; with a bare "
                    "transformer, call handle.reset() before each sampling run or pass scheduler= to apply()."
                )
            if step == 0:
                self._check_chunking()
            self.engine.begin_step(step)
        self.calls += 1

    def _start_run(self) -> None:
        self.reset()
        timesteps = getattr(self._scheduler, "timesteps", None)
        if timesteps is None:
            return
        # len() reads the tensor's shape: no device sync. Each entry of `timesteps` is one transformer evaluation
        # (second-order schedulers list their repeated times), so it must equal the plan's step count.
        if len(timesteps) != self.plan.num_steps:
            raise ValueError(
                f"l2c: the scheduler was set to {len(timesteps)} timesteps but the cache plan has "
                f"{self.plan.num_steps} steps; use num_inference_steps={self.plan.num_steps} or a router / plan "
                f"trained for {len(timesteps)} steps"
            )

    # ------------------------------------------------------------------ scheduler wrapping
    def _wrap_scheduler(self, scheduler) -> None:
        self._unwrap_scheduler()
        original = scheduler.set_timesteps  # bound method (or an earlier instance wrapper)

        def set_timesteps(*args, **kwargs):
            out = original(*args, **kwargs)
            if self._wrapper is set_timesteps:  # a removed handle's leftover wrapper only passes through
                self._start_run()
            return out

        self._scheduler, self._wrapper = scheduler, set_timesteps
        self._saved = scheduler.__dict__.get("set_timesteps")  # None: the class method shows through on restore
        scheduler.set_timesteps = set_timesteps

    def _unwrap_scheduler(self) -> None:
        scheduler, wrapper = self._scheduler, self._wrapper
        self._scheduler = self._wrapper = None
        if scheduler is None or scheduler.__dict__.get("set_timesteps") is not wrapper:
            return  # someone wrapped it after us: leave theirs; ours now passes through (see set_timesteps)
        if self._saved is None:
            del scheduler.set_timesteps
        else:
            scheduler.set_timesteps = self._saved

    # ------------------------------------------------------------------ checks and removal
    def _check_chunking(self) -> None:
        # Feed-forward chunking calls `ff` once per chunk within one block call; a per-call cache would then hand
        # one chunk's output to every chunk. Refuse rather than compute something wrong.
        for index, block in enumerate(layout_for(self.transformer).blocks(self.transformer)):
            if getattr(block, "_chunk_size", None) is not None:
                raise RuntimeError(
                    f"l2c: block {index} uses feed-forward chunking (enable_forward_chunking); "
                    "call transformer.disable_forward_chunking() before caching"
                )

    def remove(self) -> None:
        """Restore the transformer (sub-layer forwards, hooks) and the scheduler exactly as they were."""
        if self.engine is None:
            return
        self._hook.remove()
        self.engine.detach()
        self._unwrap_scheduler()
        self.engine = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def apply(
    pipe_or_transformer,
    router_or_plan,
    threshold: float | None = None,
    *,
    scheduler=None,
    calls_per_step: int = 1,
) -> DiffusersCache:
    """Cache the transformer of a diffusers pipeline (or a bare transformer) with a learned plan; see module doc.

    router_or_plan: a CachePlan, a Router, or a router file (θ: `threshold`, else the file's, else 0.5).
    scheduler: for a bare transformer in a hand-written loop, the scheduler whose `set_timesteps` starts a run
        (without one, call `handle.reset()` before each run). A pipeline's own scheduler is used automatically.
    calls_per_step: transformer calls per sampling step (1 for batched guidance, 2 for separate cond / uncond).
    """
    transformer, pipe_scheduler = _split(pipe_or_transformer)
    # Follow `pipe.scheduler` (and re-wrap it if replaced later) unless a scheduler was named explicitly.
    pipe = pipe_or_transformer if transformer is not pipe_or_transformer and scheduler is None else None
    plan, meta = _resolve(router_or_plan, threshold)
    _check_scheduler(meta, scheduler or pipe_scheduler)
    return DiffusersCache(transformer, plan, scheduler or pipe_scheduler, pipe=pipe, calls_per_step=calls_per_step)
