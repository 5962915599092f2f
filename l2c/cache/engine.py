"""The cache engine: attaches to a model's `attn` / `mlp` sub-layers without changing the model (house-style §10.4).

Each sub-layer's `forward` is replaced by a wrapper on the *instance* (the module and its state-dict keys stay as
they are); `detach()` restores the original bound method. Modes:

* "off":    compute, store nothing (the teacher in router training).
* "record": compute every sub-layer and store every output (the full step before a cache step in training).
* "hard":   sampling with a CachePlan; a sub-layer marked "reuse" at this step is NOT computed and returns the
            stored output. Only outputs that the next step reuses are stored.
* "soft":   router training: out = β_l · fresh + (1 - β_l) · stored (stored detached; gradients reach β only).

The step index comes from the sampler through `wrap(denoise)` (no host sync). Guidance done as two model calls per
evaluation (U-ViT) gets two independent caches: every top-level model call within a step is one "slot".
"""

from __future__ import annotations

import torch
from torch import nn

from .layout import sublayers
from .plan import CachePlan

MODES = ("off", "record", "hard", "soft")


class CacheEngine:
    def __init__(self, model: nn.Module, plan: CachePlan | None = None, mode: str = "hard"):
        self.model = model
        self.modules = sublayers(model)
        self.plan = None
        self.blend: torch.Tensor | None = None  # (L,) β for soft mode
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.step = 0
        self.slot = -1
        self._handles = []
        self.set_mode(mode)
        if plan is not None:
            self.set_plan(plan)
        self._attach()

    # ---------------------------------------------------------------- configuration
    def set_plan(self, plan: CachePlan) -> None:
        if plan.num_sublayers != len(self.modules):
            raise ValueError(
                f"plan has {plan.num_sublayers} sub-layers per step but the model has {len(self.modules)} "
                f"({len(self.modules) // 2} blocks): the plan or router was made for another model"
            )
        self.plan = plan
        # Python lists: the per-call lookups stay on the host with no tensor indexing.
        self._compute = plan.compute.tolist()
        self._keep = plan.keep().tolist()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown cache mode {mode!r}; use one of {MODES}")
        self.mode = mode

    def reset(self) -> None:
        """Forget every stored output (called automatically at step 0 of each sampling run)."""
        self.outputs.clear()
        self.slot = -1

    def begin_step(self, step: int) -> None:
        if step == 0:
            self.reset()
        if self.mode == "hard" and self.plan is not None and step >= self.plan.num_steps:
            raise ValueError(
                f"sampling step {step} but the cache plan covers {self.plan.num_steps} steps: "
                f"use a router / plan made for this number of steps"
            )
        self.step = step
        self.slot = -1

    def new_evaluation(self) -> None:
        """Start a new group of model calls (slots count from 0 again) without changing the step or the store."""
        self.slot = -1

    def wrap(self, denoise):
        """denoise(x, t, step) -> same, telling the engine which step each model evaluation belongs to."""

        def cached_denoise(x, t, step):
            self.begin_step(step)
            return denoise(x, t, step)

        return cached_denoise

    # ---------------------------------------------------------------- attach / detach
    def _attach(self) -> None:
        if getattr(self.model, "_l2c_cache_attached", False):
            raise RuntimeError("a cache engine is already attached to this model; detach() it first")
        self.model._l2c_cache_attached = True
        self._handles.append(self.model.register_forward_pre_hook(self._next_slot))
        self._originals = [module.__dict__.get("forward") for module in self.modules]
        for index, module in enumerate(self.modules):
            module.forward = self._make_forward(index, module.forward)

    def detach(self) -> None:
        for module, original in zip(self.modules, self._originals):
            if original is not None:
                module.forward = original
            else:
                del module.forward  # the class's forward shows through again
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()
        self.model.__dict__.pop("_l2c_cache_attached", None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()

    def _next_slot(self, module, args):
        self.slot += 1

    def _make_forward(self, index: int, original):
        def forward(*args, **kwargs):
            mode = self.mode
            if mode == "off":
                return original(*args, **kwargs)
            key = (self.slot, index)
            if mode == "hard":
                if not self._compute[self.step][index]:
                    return self._stored(key)
                out = original(*args, **kwargs)
                if self._keep[self.step][index]:
                    self.outputs[key] = out
                return out
            out = original(*args, **kwargs)
            if mode == "record":
                self.outputs[key] = out.detach()
                return out
            w = self.blend[index]
            return w * out + (1 - w) * self._stored(key)

        return forward

    def _stored(self, key):
        try:
            return self.outputs[key]
        except KeyError:
            raise RuntimeError(
                f"sub-layer {key[1]} reuses a cached output at step {self.step} (model call {key[0]} of the step) "
                f"but none is stored: run the steps in order from step 0, with the same guidance calls per step"
            ) from None


def attach_cache(model: nn.Module, plan: CachePlan | None = None, mode: str = "hard") -> CacheEngine:
    """Attach a cache engine to a DiT / U-ViT (see CacheEngine). Use as a context manager or call detach()."""
    return CacheEngine(model, plan, mode)
