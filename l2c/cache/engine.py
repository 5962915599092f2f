"""The cache engine: attaches to a model's `attn` / `mlp` sub-layers without changing the model.

Each sub-layer's `forward` is replaced on the *instance* by a small dispatcher (the module and its state-dict keys
stay as they are; PyTorch's own forward hooks and pre-hooks on the module keep running around it) and `detach()`
restores the attribute exactly. The dispatcher hands every call to the engine's current behaviour (l2c.cache.hooks):

    engine = CacheEngine(model, plan)          # sampling: run the plan (compute / reuse / forecast / drop)
    denoise = engine.wrap(denoise)             # the sampler's step index tells the engine the evaluation
    ...; engine.detach()                       # or `with CacheEngine(model, plan) as engine:`

    engine = CacheEngine(model)                # router training: pass-through unless told otherwise
    with engine.recording(): ...               # compute and store every output (detached)
    with engine.bypassed(): ...                # compute, store nothing (the teacher)
    with engine.blending(beta): ...            # β·fresh + (1 − β)·recorded

Where the plan computes none of a block's sub-layers at an evaluation, a block with a shortcut (l2c.cache.shortcuts:
FLUX's) is not entered: its output is built from the cached outputs and its gates alone, bit-identical.

A forward pre-hook on the root model numbers the model calls within one evaluation ("slots"): U-ViT's two-call
guidance gets two independent caches while DiT's doubled batch uses one. `begin_step(j)` starts evaluation j
(j = 0 also forgets everything stored: a new sampling run), `begin_evaluation()` starts a new group of calls without
changing the step, and entering one of the context managers does the same. The step index comes from the sampler,
never from a tensor, so the engine never synchronises with the device.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch import nn

from .hooks import Blend, Bypass, Record, RunPlan, output_shape, signature, zeros_of
from .layout import describe, sublayer_inputs, sublayers  # noqa: F401  (sublayers: re-exported for callers)
from .plan import CachePlan
from .shortcuts import norms_unwrapped, shortcut_blocks

# Models with an engine attached. Kept outside the model so that detaching leaves its __dict__ untouched.
_ATTACHED: weakref.WeakSet = weakref.WeakSet()


class SublayerHooks:
    """The shared attach / detach base: routes every call of the model's cacheable sub-layers to `behaviour`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.sublayers = describe(model)  # names, kinds and blocks, in plan order
        self.modules = [s.module for s in self.sublayers]
        self.behaviour = Bypass()
        self.step = 0  # the model evaluation, in sampling order
        self.slot = -1  # the model call within the evaluation (the root pre-hook counts from 0)
        self._wrappers: list = []
        self._saved: list = []
        self._handle = None
        self._after = None
        # Sub-layers called so far in the current model call (None outside one): a child called twice per call
        # (feed-forward chunking, one FF shared by two streams) would be handed its first output the second time.
        self._called: set | None = None

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def _attach(self) -> None:
        if self.model in _ATTACHED:
            raise RuntimeError("a cache engine is already attached to this model; detach() it first")
        _ATTACHED.add(self.model)
        self._handle = self.model.register_forward_pre_hook(self._count_call)
        self._after = self.model.register_forward_hook(self._end_call)
        for index, module in enumerate(self.modules):
            self._saved.append(module.__dict__.get("forward"))  # None: the class's forward
            wrapper = self._dispatcher(index, module.forward)
            self._wrappers.append(wrapper)
            module.forward = wrapper

    def detach(self) -> None:
        """Restore every sub-layer's `forward` and remove the pre-hook (idempotent)."""
        if not self.attached:
            return
        for module, saved, wrapper in zip(self.modules, self._saved, self._wrappers):
            if module.__dict__.get("forward") is not wrapper:
                continue  # someone wrapped ours after attaching: leave theirs; ours passes through from now on
            if saved is None:
                del module.forward  # the class's forward shows through again
            else:
                module.forward = saved
        self.behaviour = Bypass()
        self._handle.remove()
        self._after.remove()
        self._handle = self._after = None
        self._wrappers, self._saved = [], []
        _ATTACHED.discard(self.model)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()

    def _count_call(self, module, args):
        # A caller that names its calls (l2c.apply: "cond" / "uncond") sets the slot after this hook; counting
        # resumes from 0 after a named call.
        self.slot = self.slot + 1 if isinstance(self.slot, int) else 0
        self._called = set()

    def _end_call(self, module, args, output):
        self._called = None

    def _dispatcher(self, index: int, forward):
        def cached_forward(*args, **kwargs):
            called = self._called
            if called is not None:
                if index in called:
                    self._refuse_repeated_call(index)
                called.add(index)
            return self.behaviour(self.step, self.slot, index, forward, args, kwargs)

        return cached_forward

    def _refuse_repeated_call(self, index: int):
        sub = self.sublayers[index]
        self._called = None
        raise RuntimeError(
            f"l2c: sub-layer {sub.name} ({type(sub.module).__name__}) was called twice in one model call; a child "
            "called more than once per block call (feed-forward chunking, one feed-forward run on two streams) "
            "cannot be cached per call. Disable the chunking (disable_forward_chunking()), or leave this model "
            "uncached"
        )


class CacheEngine(SublayerHooks):
    """Sub-layer cache of a DiT / U-ViT (or any model with a cache layout). See the module docstring.

    Args:
        model: the network; its sub-layers are found through `l2c.cache.layout`.
        plan:  a CachePlan for sampling (validated against the model before anything is attached), or None for an
               engine that passes through unless switched with recording() / blending() / bypassed().
        mode:  accepted for older callers only: "hard" (run the plan) or "off" (pass through).
        grouped: forecast sub-layers with identical plan columns as one tensor from shared flat buffers
               (l2c.cache.grouped); the outputs are those of the per-sub-layer form.
    """

    def __init__(self, model: nn.Module, plan: CachePlan | None = None, mode: str | None = None, grouped: bool = False):
        super().__init__(model)
        if mode not in (None, "hard", "off"):
            raise ValueError(
                f"cache mode {mode!r} is gone: use `with engine.recording():`, `with engine.blending(beta):` or "
                "`with engine.bypassed():`"
            )
        if plan is not None:
            self._check_plan(plan)
        self.plan = plan
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}  # recorded outputs that blending reads
        self._runner = RunPlan(plan, grouped) if plan is not None and mode != "off" else None
        self.behaviour = self._runner or Bypass()
        self._attach()
        self._inputs: list[tuple[nn.Module, object, object]] = []  # (module, saved forward, our wrapper)
        self._block_calls: dict[tuple, tuple] = {}  # (slot, block) -> argument shapes of its last hooked run
        if self._runner is not None:
            self._skip_unread_inputs(plan)
            self._shortcut_skipped_blocks(plan)

    def _skip_unread_inputs(self, plan: CachePlan) -> None:
        """While the plan runs, a sub-layer it does not compute at this evaluation does not read its input, so the
        pre-norm (or parallel producer) that only feeds it is not computed either: it hands back its own input (a
        norm) or zeros shaped like its output (the attention and MLP-in of a fused output projection). A module
        feeding several sub-layers runs while any of them computes. Outputs are unchanged: the stand-in is read by
        nothing the plan computes.

        The stand-in is used only where this model call made the same call (same argument shapes) at an evaluation
        that computed it, and every reader has a stored output for this call: where the runner will recompute a
        sub-layer (a new guidance call, a changed shape), its inputs compute too."""
        inputs = sublayer_inputs(self.model)
        if inputs is None:
            return
        readers: dict[nn.Module, list[int]] = {}
        for index, modules in enumerate(inputs):
            for module in modules:
                readers.setdefault(module, []).append(index)
        computed = plan.compute.tolist()  # host lists: no tensor read in the call
        runner = self._runner
        seen: dict[tuple, tuple] = {}  # (slot, k) -> (argument shapes, output shape or "input") of the last compute
        self._input_calls = seen

        def skipping(k: int, module_readers: list[int], forward):
            def input_forward(*args, **kwargs):
                if self.behaviour is not runner:
                    return forward(*args, **kwargs)
                key, shapes = (self.slot, k), signature(args, kwargs)
                row = computed[self.step]
                if not any(row[i] for i in module_readers):
                    last = seen.get(key)
                    if last is not None and last[0] == shapes and runner.has_outputs(self.slot, module_readers):
                        return _stand_in(last[1], args, kwargs, runner)
                out = forward(*args, **kwargs)
                seen[key] = (shapes, _output_form(out, args, kwargs))
                return out

            return input_forward

        for k, (module, module_readers) in enumerate(readers.items()):
            wrapper = skipping(k, module_readers, module.forward)
            self._inputs.append((module, module.__dict__.get("forward"), wrapper))
            module.forward = wrapper

    def _shortcut_skipped_blocks(self, plan: CachePlan) -> None:
        """A block none of whose sub-layers the plan computes at this evaluation runs as its shortcut
        (l2c.cache.shortcuts): the gated residual adds of the outputs the runner answers, nothing else. Only where
        this model call ran the block hooked before with the same argument shapes (so every sub-layer has an output
        stored for it, from the same shapes); otherwise the block runs hooked and the runner decides as always."""
        computed = plan.compute.tolist()
        runner, seen = self._runner, self._block_calls

        def shortcutting(b: int, block: nn.Module, shortcut, indices: list[int], forward):
            def block_forward(*args, **kwargs):
                if self.behaviour is not runner:
                    return forward(*args, **kwargs)
                step, slot = self.step, self.slot
                key, shapes = (slot, b), signature(args, kwargs)
                row = computed[step]
                if (
                    not any(row[i] for i in indices)
                    and seen.get(key) == shapes
                    and runner.has_outputs(slot, indices)
                    and norms_unwrapped(block, shortcut)
                ):
                    return shortcut.run(block, [runner.answer(step, slot, i) for i in indices], args, kwargs)
                out = forward(*args, **kwargs)
                seen[key] = shapes
                return out

            return block_forward

        for b, block, shortcut, indices in shortcut_blocks(self.model, self.sublayers):
            wrapper = shortcutting(b, block, shortcut, indices, block.forward)
            self._inputs.append((block, block.__dict__.get("forward"), wrapper))
            block.forward = wrapper

    def detach(self) -> None:
        for module, saved, wrapper in getattr(self, "_inputs", ()):
            if module.__dict__.get("forward") is not wrapper:
                continue  # wrapped again by someone else after us: leave theirs
            if saved is None:
                del module.forward
            else:
                module.forward = saved
        self._inputs = []
        super().detach()

    def _check_plan(self, plan: CachePlan) -> None:
        plan.validate()
        if plan.num_sublayers != len(self.modules):
            blocks = len({s.block for s in self.sublayers})
            raise ValueError(
                f"plan has {plan.num_sublayers} sub-layers per step but the model has {len(self.modules)} "
                f"({blocks} blocks): the plan or router was made for another model"
            )

    # ------------------------------------------------------------------ evaluations
    def reset(self) -> None:
        """Forget every stored output and the memory peak (automatic at step 0 of each sampling run)."""
        self.outputs.clear()
        getattr(self, "_input_calls", {}).clear()
        self._block_calls.clear()
        if self._runner is not None:
            self._runner.reset()
        self.slot = -1

    def begin_step(self, step: int) -> None:
        """Start model evaluation `step` (in sampling order); step 0 starts a new run."""
        if step == 0:
            self.reset()
        if self._runner is not None and step >= self.plan.num_steps:
            raise ValueError(
                f"sampling step {step} but the cache plan covers {self.plan.num_steps} steps: "
                f"use a router / plan made for this number of steps"
            )
        self.step = step
        self.slot = -1

    def begin_evaluation(self) -> None:
        """Start a new group of model calls (slots count from 0 again); the step and the store stay."""
        self.slot = -1

    def wrap(self, denoise):
        """denoise(x, t, step) -> same, telling the engine which evaluation each model call belongs to."""

        def cached_denoise(x, t, step):
            self.begin_step(step)
            return denoise(x, t, step)

        return cached_denoise

    def snapshot(self) -> dict:
        """What the running plan has stored now, to resume from with restore() (the schedule search resumes candidate
        plans from the run of the plan they modify, l2c.training.schedule_search)."""
        if self._runner is None:
            raise RuntimeError("this engine runs no plan: nothing to snapshot")
        return self._runner.snapshot()

    def restore(self, state: dict) -> None:
        """Continue from a snapshot(). The next evaluation is the one the snapshot was taken before; the snapshot's
        plan must agree with this one on every evaluation before it (l2c.cache.hooks.plan_rows), which the caller
        checks."""
        if self._runner is None:
            raise RuntimeError("this engine runs no plan: nothing to restore")
        self._runner.restore(state)

    # ------------------------------------------------------------------ behaviours for router training
    @contextmanager
    def recording(self):
        """Compute every sub-layer and store its output (detached) for blending; starts a new evaluation."""
        with self.behaving(Record(self.outputs)):
            yield self

    @contextmanager
    def blending(self, beta: torch.Tensor):
        """out = β_l·fresh + (1 − β_l)·recorded, β (L,) one weight per sub-layer; starts a new evaluation."""
        if beta.shape != (len(self.modules),):
            raise ValueError(f"blending weights must have shape ({len(self.modules)},), got {tuple(beta.shape)}")
        with self.behaving(Blend(self.outputs, beta)):
            yield self

    @contextmanager
    def bypassed(self):
        """Compute every sub-layer and store nothing (the uncached teacher); starts a new evaluation."""
        with self.behaving(Bypass()):
            yield self

    @contextmanager
    def behaving(self, behaviour):
        """Route the sub-layers to any behaviour `behaviour(step, slot, index, forward, args, kwargs)` (see
        l2c.cache.hooks) inside the block; starts a new evaluation."""
        if not self.attached:
            raise RuntimeError("this cache engine is detached")
        previous, self.behaviour = self.behaviour, behaviour
        self.slot = -1
        try:
            yield
        finally:
            if self.attached:  # detach() inside the block already set the pass-through for good
                self.behaviour = previous

    # ------------------------------------------------------------------ memory report
    @property
    def stored_bytes(self) -> int:
        """Bytes of sub-layer outputs and differences the plan holds now."""
        return self._runner.stored_bytes if self._runner is not None else 0

    @property
    def peak_stored_bytes(self) -> int:
        """The most bytes the plan held at once since the last reset (i.e. over the last sampling run)."""
        return self._runner.peak_bytes if self._runner is not None else 0


def _first_tensor(args, kwargs):
    # The module's input, positional or by keyword (diffusers calls most attention children by keyword only).
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    value = kwargs.get("hidden_states")
    if isinstance(value, torch.Tensor):
        return value
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def _output_form(out, args, kwargs):
    """How a skipped input stands in: "input" where it returned a tensor shaped like its input (a norm), else its
    output's structure (zeros of it)."""
    x = _first_tensor(args, kwargs)
    if isinstance(out, torch.Tensor) and x is not None and out.shape == x.shape and out.dtype == x.dtype:
        return "input"
    return output_shape(out)


def _stand_in(form, args, kwargs, runner):
    return _first_tensor(args, kwargs) if form == "input" else zeros_of(form, runner)


def attach_cache(model: nn.Module, plan: CachePlan | None = None) -> CacheEngine:
    """Attach a cache engine to a DiT / U-ViT (see CacheEngine). Use as a context manager or call detach()."""
    return CacheEngine(model, plan)
