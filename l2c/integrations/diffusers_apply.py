"""Attach l2c's cache engine to the diffusers pipelines and transformers users already run.

    handle = apply(pipe, "router.safetensors")      # any transformer with a cache layout (l2c.cache.layout)
    images = pipe(prompt, num_inference_steps=28).images
    handle.remove()                                 # the model and scheduler are exactly as before

Nothing in the pipeline changes. Which evaluation a transformer call belongs to is read from the pipeline itself:
the scheduler's own `set_timesteps` starts a run and its `step` ends an evaluation (both wrapped on the scheduler
*instance*), so every transformer call between two steps belongs to the same evaluation, however many the pipeline
makes: one with batched guidance, two with true CFG (FLUX and Qwen-Image only when a negative prompt is given), a
third in SD3's skip-layer window. Each call of an evaluation gets its own cache, named after the pipeline's
`cache_context` ("cond", "uncond", ...) where the transformer is a diffusers `CacheMixin`, by call order otherwise.
A pipeline with two transformers taking turns (Wan 2.2's experts) has both cached on one step axis. Counting happens
on the host (no `.item()` on a timestep, no device sync).

A bare transformer with no scheduler keeps the simple rule: after `handle.reset()`, each call is the next step
(times `calls_per_step`).

The sub-layers are found through the same layout table as our own DiT and U-ViT (`l2c.cache.layout`), so a
router trained on our DiT applies to its converted diffusers copy unchanged (attn -> attn1, mlp -> ff).
diffusers itself is never imported here: pipelines are recognised by their `transformer` and `scheduler`.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
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


def _split(pipe_or_transformer) -> tuple[list[nn.Module], object | None]:
    """(transformers, scheduler or None): a pipeline is anything with a `transformer` module and a `scheduler`; a
    second expert (`transformer_2`, Wan 2.2) is cached too."""
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if isinstance(transformer, nn.Module) and not isinstance(pipe_or_transformer, nn.Module):
        second = getattr(pipe_or_transformer, "transformer_2", None)
        models = [transformer] + ([second] if isinstance(second, nn.Module) else [])
        return models, getattr(pipe_or_transformer, "scheduler", None)
    if isinstance(pipe_or_transformer, nn.Module):
        return [pipe_or_transformer], None
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


# More calls than this between two scheduler steps means the loop does not step the scheduler it was given.
MAX_CALLS_PER_STEP = 8


class _Cached:
    """One transformer under the cache: its engine, its pre-hook and its wrapped `cache_context`."""

    def __init__(self, owner: DiffusersCache, transformer: nn.Module, plan: CachePlan):
        self.transformer = transformer
        self.engine = CacheEngine(transformer, plan)  # real skipping: reused sub-layers are not entered
        self.context: str | None = None  # the pipeline's cache_context name while one is open
        self.step = -1  # the evaluation this transformer's engine is at
        self.calls = 0  # calls within it
        # After the engine's own pre-hook, so the slot set here is the one the engine keys its caches by.
        self.hook = transformer.register_forward_pre_hook(lambda module, args: owner._before_call(self))
        self.saved_context = transformer.__dict__.get("cache_context")
        self.context_wrapper = None
        original = getattr(transformer, "cache_context", None)
        if callable(original):
            self.context_wrapper = self._named(original)
            transformer.cache_context = self.context_wrapper

    def _named(self, original):
        @contextmanager
        def cache_context(name, *args, **kwargs):
            previous, self.context = self.context, name
            try:
                with original(name, *args, **kwargs):
                    yield
            finally:
                self.context = previous

        return cache_context

    def remove(self) -> None:
        self.hook.remove()
        self.engine.detach()
        if self.context_wrapper is not None and self.transformer.__dict__.get("cache_context") is self.context_wrapper:
            if self.saved_context is None:
                del self.transformer.cache_context
            else:
                self.transformer.cache_context = self.saved_context


class DiffusersCache:
    """What `apply` returns: the attached engines plus the step counter; `.remove()` restores everything.

    Attributes: `engine` (the first transformer's CacheEngine), `engines` (one per transformer), `plan`, `step`
    (evaluations finished in the current run: scheduler steps, or calls // calls_per_step without a scheduler).
    """

    def __init__(self, transformers, plan: CachePlan, scheduler=None, pipe=None, calls_per_step: int = 1):
        if isinstance(transformers, nn.Module):
            transformers = [transformers]
        if calls_per_step < 1:
            raise ValueError(f"calls_per_step must be >= 1, got {calls_per_step}")
        for transformer in transformers:
            _check_supported(transformer)
        self.transformers = list(transformers)
        self.transformer = self.transformers[0]
        self.plan = plan
        self.calls_per_step = calls_per_step
        self.calls = 0  # transformer calls in the current run
        self.step = 0
        self._pipe = pipe  # to notice `pipe.scheduler = ...` made after apply()
        self._scheduler = None
        self._wrappers: dict[str, object] = {}
        self._saved: dict[str, object] = {}
        self._check_chunking()
        self._cached: list[_Cached] = []
        try:
            for transformer in self.transformers:
                self._cached.append(_Cached(self, transformer, plan))
            if scheduler is not None:
                self._wrap_scheduler(scheduler)
        except Exception:
            for cached in self._cached:
                cached.remove()
            raise
        self.engines = [c.engine for c in self._cached]
        self.engine = self.engines[0]

    # ------------------------------------------------------------------ the step index
    def reset(self) -> None:
        """Start a new sampling run: step 0, empty caches. Automatic with a scheduler; call it yourself otherwise."""
        self.calls = self.step = 0
        for cached in self._cached:
            cached.engine.reset()
            cached.step, cached.calls = -1, 0

    def _before_call(self, cached: _Cached) -> None:
        current = getattr(self._pipe, "scheduler", None)
        if self._pipe is not None and current is not self._scheduler and current is not None:
            # The pipeline's scheduler was replaced after apply(): its set_timesteps (already called for this
            # run) was not wrapped, so this call is the first of a new run. Wrap the new one and start clean.
            self._wrap_scheduler(current)
            self._start_run()
        if self._scheduler is None:
            self.step, call_in_step = divmod(self.calls, self.calls_per_step)
        self.calls += 1
        step = self.step
        if step >= self.plan.num_steps:
            raise RuntimeError(
                f"l2c: transformer call {self.calls} would be sampling step {step}, but the cache plan covers "
                f"{self.plan.num_steps} steps: the loop runs more model calls than the plan has steps. Use a plan "
                "made for this many steps; with a bare transformer, call handle.reset() before each sampling run "
                "or pass scheduler= to apply()."
            )
        engine = cached.engine
        if step != cached.step:
            if step == 0:
                self._check_chunking()
            engine.begin_step(step)
            cached.step, cached.calls = step, 0
        if self._scheduler is not None and cached.calls >= MAX_CALLS_PER_STEP:
            raise RuntimeError(
                f"l2c: {cached.calls + 1} transformer calls without a scheduler step: the sampling loop does not "
                f"call step() on the scheduler the cache follows ({type(self._scheduler).__name__}); pass the one "
                "it steps as scheduler=, or none and call handle.reset() before each run"
            )
        # The cache of this call: the pipeline's cache_context name, else its order within the evaluation.
        engine.slot = cached.context if cached.context is not None else cached.calls
        cached.calls += 1

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

    def _end_step(self) -> None:
        self.step += 1

    # ------------------------------------------------------------------ scheduler wrapping
    def _wrap_scheduler(self, scheduler) -> None:
        self._unwrap_scheduler()
        self._scheduler = scheduler
        for name, after in (("set_timesteps", self._start_run), ("step", self._end_step)):
            original = getattr(scheduler, name)  # bound method (or an earlier instance wrapper)
            self._saved[name] = scheduler.__dict__.get(name)  # None: the class method shows through on restore
            self._wrappers[name] = wrapper = self._following(name, original, after)
            setattr(scheduler, name, wrapper)

    def _following(self, name, original, after):
        # wraps: the signature shows through (pipelines inspect set_timesteps for `sigmas=` / `timesteps=`).
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            out = original(*args, **kwargs)
            if self._wrappers.get(name) is wrapper:  # a removed handle's leftover wrapper only passes through
                after()
            return out

        return wrapper

    def _unwrap_scheduler(self) -> None:
        scheduler, wrappers = self._scheduler, self._wrappers
        self._scheduler, self._wrappers = None, {}
        if scheduler is None:
            return
        for name, wrapper in wrappers.items():
            if scheduler.__dict__.get(name) is not wrapper:
                continue  # someone wrapped it after us: leave theirs; ours now passes through
            if self._saved.get(name) is None:
                delattr(scheduler, name)
            else:
                setattr(scheduler, name, self._saved[name])

    # ------------------------------------------------------------------ checks and removal
    def _check_chunking(self) -> None:
        # Feed-forward chunking calls `ff` once per chunk within one block call; a per-call cache would then hand
        # one chunk's output to every chunk. Refuse rather than compute something wrong.
        for transformer in self.transformers:
            for index, block in enumerate(layout_for(transformer).blocks(transformer)):
                if getattr(block, "_chunk_size", None) is not None:
                    raise RuntimeError(
                        f"l2c: block {index} uses feed-forward chunking (enable_forward_chunking); "
                        "call transformer.disable_forward_chunking() before caching"
                    )

    def remove(self) -> None:
        """Restore the transformers (sub-layer forwards, hooks, cache_context) and the scheduler exactly."""
        if self.engine is None:
            return
        for cached in self._cached:
            cached.remove()
        self._unwrap_scheduler()
        self.engine = None
        self.engines = []

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
    scheduler: for a bare transformer in a hand-written loop, the scheduler whose `set_timesteps` starts a run and
        whose `step` ends an evaluation (without one, call `handle.reset()` before each run). A pipeline's own
        scheduler is used automatically.
    calls_per_step: without a scheduler only: transformer calls per sampling step (1 for batched guidance, 2 for
        separate cond / uncond calls). With a scheduler the calls are counted between its steps.
    """
    transformers, pipe_scheduler = _split(pipe_or_transformer)
    # Follow `pipe.scheduler` (and re-wrap it if replaced later) unless a scheduler was named explicitly.
    is_pipe = transformers[0] is not pipe_or_transformer
    pipe = pipe_or_transformer if is_pipe and scheduler is None else None
    plan, meta = _resolve(router_or_plan, threshold)
    _check_scheduler(meta, scheduler or pipe_scheduler)
    return DiffusersCache(transformers, plan, scheduler or pipe_scheduler, pipe=pipe, calls_per_step=calls_per_step)
