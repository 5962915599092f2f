"""Compiled (cached) sampling: every transformer block runs as one `torch.compile` graph (fullgraph, no breaks).

Why blocks and not the whole model: compiling the model with a CacheEngine attached traces the engine's per-call
lookups (`actions[step][index]`), so Dynamo guards on the step number and compiles a new graph at every step; after
`torch._dynamo.config.recompile_limit` (8) graphs it silently falls back to eager (measured on torch 2.13, see
docs/benchmarks.md). One graph per distinct plan row would stop that, but each would be the whole model: a DDIM-50
plan has up to 26 distinct rows, each a full DiT-XL/2 compile.

Here a block's graph depends only on what the plan does with its sub-layers at this model call: compute and keep the
output for later steps, compute only, take a given output (reuse), forecast it from given terms (order 1 or 2), or
drop it. For two sub-layers per block that is at most 6 x 6 = 36 graphs per block kind (DiT: one kind; U-ViT: blocks
without / with a long skip; FLUX: double blocks with three sub-layers, single blocks), whatever the plan and the
number of steps, shared by all blocks of the kind (parameters are graph inputs), per batch size and precision; a
plan uses few of them (TaylorSeer order 2: 4, its first forecasts being of lower order). Outputs keep their
structure (a joint attention's (image, text) pair is given, forecast or zeroed per element), and the model's own
call may pass everything by keyword, as diffusers pipelines do. A forecast is summed inside the graph, f0 + c1·F1
(+ c2·F2), with the coefficients as 0-d tensors (no recompilation per step), so the compiler can fuse it with the
block's gate and residual add: one pass over the stored tensors where eager sampling makes four (no faster on a
2-core CPU, where dispatch dominates at small widths: docs/benchmarks.md). Between blocks, the model's own forward
(embeddings, the block loop, the head) runs eagerly, as does the plan bookkeeping: before each model call every
non-computed sub-layer's output (or its forecast's terms) comes from the engine's own RunPlan (l2c.cache.hooks), and
after it the computed outputs the plan keeps are handed back to it, so reuse, forecasting, dropping and the memory
release are exactly those of eager cached sampling.

CUDA graphs (`mode="reduce-overhead"` or `"max-autotune"` on CUDA): a new CUDA-graph generation is marked at every
model evaluation, and kept outputs are cloned out of the graph's memory pool before the next replay overwrites them.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
from torch import nn

from ..cache.forecast import map_output
from ..cache.hooks import OutputShape, RunPlan, output_shape, signature
from ..cache.layout import layout_for, sublayers
from ..cache.plan import COMPUTE, DROP, REUSE, CachePlan

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
# Graphs share one code object (nn.Module._call_impl), so torch's per-code recompile limit (8) counts all block
# kinds, patterns, batch sizes and precisions together; 36 patterns x 2 kinds x 2 precisions x 2 batch sizes fit.
RECOMPILE_LIMIT = 288

# What a sub-layer does inside a block's graph.
_COMPUTE, _COMPUTE_KEEP, _GIVEN, _ZERO, _FORECAST1, _FORECAST2 = 0, 1, 2, 3, 4, 5


class _Route:
    """Per sub-layer switch read inside the compiled block: Dynamo guards on `what` by value, not on identity."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.what = _COMPUTE
        self.given: torch.Tensor | None = None  # the output to return when not computed (f0 of a forecast)
        self.terms: tuple = ()  # a forecast's (difference, 0-d coefficient) pairs: given + sum(c * F)
        self.fresh: torch.Tensor | None = None  # the computed output, when the plan keeps it
        self.zeros = None  # a dropped output's structure (l2c.cache.hooks.output_shape): the graph makes the zeros


def _routed_forward(route: _Route, *args, **kwargs):
    # Traced into the block's graph: the branch taken is fixed per graph. An output is a tensor or a tuple of tensors
    # (a joint attention's (image, text) pair); given / terms / zeros have the output's structure.
    if route.what == _GIVEN:
        return route.given
    if route.what in (_FORECAST1, _FORECAST2):
        if isinstance(route.given, torch.Tensor):
            return _forecast(route.given, route.terms)
        return type(route.given)(None if g is None else _forecast(g, t) for g, t in zip(route.given, route.terms))
    if route.what == _ZERO:
        return _zeros(route.zeros)
    out = type(route.module).forward(route.module, *args, **kwargs)
    if route.what == _COMPUTE_KEEP:
        route.fresh = out  # a graph output; handed to the plan's store after the model call
    return out


def _zeros(shape):
    # Made inside the graph, so the compiler can fold them into the block's add (no stored tensor is read).
    if isinstance(shape, OutputShape):
        return torch.zeros(shape.size, dtype=shape.dtype, device=shape.device)
    return type(shape)(None if s is None else _zeros(s) for s in shape)


def _forecast(f0: torch.Tensor, terms) -> torch.Tensor:
    out = f0
    for d, c in terms:
        out = out + c * d
    return out


def _returning(out):
    # The plan runner "computes" a sub-layer by calling its forward: hand it what the graph already computed.
    return lambda *args, **kwargs: out


def _not_computed(*args, **kwargs):
    raise AssertionError("the plan runner computed a sub-layer that the compiled block was told to skip")


class CompiledCache:
    """Compile the blocks of a model with a cache layout (our DiT / U-ViT, a diffusers transformer) and run a
    CachePlan (or nothing: plan=None) around them.

    The same API as CacheEngine for sampling: `wrap(denoise)`, `detach()`, context manager. Compilation happens at
    the first call of each pattern; compiled graphs outlive `detach()` (Dynamo caches them per code object), so a
    second CompiledCache on the same model compiles nothing new.

    Args:
        model:   the network (its blocks come from l2c.cache.layout).
        plan:    a CachePlan, or None for compiled uncached sampling.
        mode:    torch.compile mode, one of COMPILE_MODES.
        backend: torch.compile backend ("inductor"; "eager" / "aot_eager" to test tracing cheaply).
    """

    def __init__(self, model: nn.Module, plan: CachePlan | None = None, mode: str = "default", backend="inductor"):
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}; use one of {', '.join(COMPILE_MODES)}")
        self.model = model
        self.plan = plan
        self.modules = sublayers(model)
        if plan is not None and plan.num_sublayers != len(self.modules):
            raise ValueError(f"plan has {plan.num_sublayers} sub-layers per step but the model has {len(self.modules)}")
        self.runner = RunPlan(plan) if plan is not None else None
        self.actions = plan.actions.tolist() if plan is not None else None
        self.keep = plan.keep().tolist() if plan is not None else None
        self.drops = (plan.actions == DROP).any(0).tolist() if plan is not None else None  # per sub-layer
        self.cudagraphs = mode in _CUDAGRAPH_MODES and next(model.parameters()).device.type == "cuda"
        self.step, self.slot = 0, -1
        self.routes = [_Route(m) for m in self.modules]
        self._coefficients: dict[tuple, torch.Tensor] = {}  # forecast coefficients as 0-d tensors, made once each
        self._attach(mode, backend)

    # ------------------------------------------------------------------ attach / detach
    def _attach(self, mode: str, backend) -> None:
        for module in self.modules:
            if "forward" in module.__dict__:
                raise RuntimeError(
                    f"{type(module).__name__}.forward is already wrapped on this model (a CacheEngine attached?); "
                    "detach it before compiling"
                )
        self.blocks = layout_for(self.model).blocks(self.model)
        self._saved_calls = [block._compiled_call_impl for block in self.blocks]
        for module, route in zip(self.modules, self.routes):
            module.forward = types.MethodType(_routed_forward, route)
        for block in self.blocks:
            block.compile(fullgraph=True, dynamic=False, mode=mode, backend=backend)
        self._handles = [
            self.model.register_forward_pre_hook(self._before_call, with_kwargs=True),
            self.model.register_forward_hook(self._after_call),
        ]

    def detach(self) -> None:
        """Restore the sub-layers' and blocks' calls and remove the hooks (idempotent)."""
        if not self._handles:
            return
        for handle in self._handles:
            handle.remove()
        for module in self.modules:
            del module.forward
        for block, saved in zip(self.blocks, self._saved_calls):
            block._compiled_call_impl = saved
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()

    # ------------------------------------------------------------------ evaluations
    def begin_step(self, step: int) -> None:
        """Start model evaluation `step` in sampling order; step 0 starts a new run (forgets every stored output)."""
        if self.runner is not None:
            if step == 0:
                self.runner.reset()
            if step >= self.plan.num_steps:
                raise ValueError(f"sampling step {step} but the cache plan covers {self.plan.num_steps} steps")
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        self.step, self.slot = step, -1

    def wrap(self, denoise):
        """denoise(x, t, step) -> same, compiled blocks and the plan's step set for its model calls."""

        def compiled_denoise(x, t, step):
            self.begin_step(step)
            with recompile_limit(RECOMPILE_LIMIT):
                return denoise(x, t, step)

        return compiled_denoise

    def _before_call(self, model, args, kwargs):
        self.slot += 1
        if self.runner is None:
            return
        actions, keep = self.actions[self.step], self.keep[self.step]
        # The runner keys what it stores by the model call's argument shapes (diffusers models are called by
        # keyword): a call of other shapes (a new batch size) computes what the plan would have reused, and the
        # runner stores it afresh after the call.
        self._args, self._kwargs = args, kwargs
        shapes = signature(args, kwargs)
        runner = self.runner
        for index, route in enumerate(self.routes):
            action = actions[index]
            route.given = None
            if action != COMPUTE and runner.signatures.get((self.slot, index)) != shapes:
                route.what = _COMPUTE_KEEP
                continue
            if action == COMPUTE:
                # A sub-layer the plan drops later hands its output over once per run, for the zeros' shape.
                needs_shape = self.drops[index] and runner.output_structure(self.slot, index) is None
                route.what = _COMPUTE_KEEP if keep[index] or needs_shape else _COMPUTE
                continue
            if action in (REUSE, DROP):
                # The plan's reuse (and its release of histories nobody reads again); for DROP the runner's zeros
                # give the output's structure and the graph makes its own.
                given = runner(self.step, self.slot, index, _not_computed, args, kwargs)
                if action == DROP:
                    route.what, route.zeros = _ZERO, output_shape(given)
                else:
                    route.what, route.given = _GIVEN, given
                continue
            route.given, terms = runner.forecast_terms(self.step, self.slot, index)
            if isinstance(route.given, torch.Tensor):
                order = len(terms)
                route.terms = tuple((d, self._coefficient(c, d)) for d, c in terms)
            else:  # a tuple output: one term list per element
                order = min(len(t) for t in terms if t is not None)
                route.terms = tuple(
                    None if t is None else tuple((d, self._coefficient(c, d)) for d, c in t) for t in terms
                )
            route.what = (_GIVEN, _FORECAST1, _FORECAST2)[order]  # the order the history holds so far

    def _coefficient(self, value: float, like: torch.Tensor) -> torch.Tensor:
        # A graph input rather than a Python number, which Dynamo would bake into the graph (one graph per value).
        key = (value, like.dtype, like.device)
        if key not in self._coefficients:
            self._coefficients[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
        return self._coefficients[key]

    def _after_call(self, model, args, output):
        if self.runner is None:
            return
        for index, route in enumerate(self.routes):
            if route.what not in (_COMPUTE, _COMPUTE_KEEP):
                route.given, route.terms = None, ()
                continue
            fresh, route.fresh = route.fresh, None
            if fresh is not None and self.cudagraphs:
                fresh = map_output(torch.Tensor.clone, fresh)  # the next replay of this graph overwrites its outputs
            self.runner(self.step, self.slot, index, _returning(fresh), self._args, self._kwargs)

    @property
    def peak_stored_bytes(self) -> int:
        return self.runner.peak_bytes if self.runner is not None else 0


@contextmanager
def recompile_limit(limit: int):
    """Raise torch's per-code-object recompile limit inside the block (never lower it)."""
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(recompile_limit=max(limit, dynamo_config.recompile_limit)):
        yield


def compiled_graph_count() -> int:
    """Graphs Dynamo has compiled in this process so far (for tests and benchmarks)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
