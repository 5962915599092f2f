"""Multiply-accumulate counts of a model evaluation, split into cacheable sub-layers and the always-computed rest.

Two conventions (docs/upstream.md §5):
* "paper": nn.Linear / nn.Conv2d only, batch 1, one call per evaluation (what thop counted for the L2C tables);
* "analytic": the same plus the attention matmuls (QKᵀ and AV: 2·T²·D per attention sub-layer), which thop and
  the FLOP counters miss for scaled_dot_product_attention.
Counted with forward hooks on a shape-only (meta) copy of the model, so DiT-XL/2 costs nothing to count.

Any other supported model (a diffusers transformer) is measured instead: `measure_macs(model, call)` runs one
evaluation under torch's FLOP counter, attention included (the CPU attention kernel, which the counter misses, is
counted with the counter's own formula), and attributes each module's count to the sub-layer it belongs to. A
sub-layer's cost includes its skippable inputs (a fused output projection's attention and MLP-in), which are not
computed when it is not. On our DiT and U-ViT the measured profile equals the counted one (tested).

Forecasting is element-wise arithmetic on a sub-layer's output, counted honestly in both conventions: a forecast
executed at order p costs p multiply-adds per output element (f0 + k·F1 [+ c·F2]), and each computation that updates
p divided differences costs p more (a subtraction and a scaling per order). A reuse or a drop costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..models import create_model
from .layout import describe, sublayers


@dataclass(frozen=True)
class MacProfile:
    sublayer_linear: list[float]  # (L,) Linear/Conv MACs of each cacheable sub-layer, one call, batch 1
    sublayer_attention: list[float]  # (L,) attention-matmul MACs (non-zero for attention sub-layers only)
    always_linear: float  # Linear/Conv MACs outside the cacheable sub-layers (embeddings, adaLN, skips, head)
    sublayer_outputs: list[float] = field(default_factory=list)  # (L,) output elements of one call, batch 1
    # Blocks with a shortcut (l2c.cache.shortcuts), in a measured time profile only: (the block's sub-layer indices,
    # what it costs besides them while any of them computes). A block none of whose sub-layers computes skips it.
    block_glue: list[tuple[list[int], float]] = field(default_factory=list)

    def per_evaluation(self, compute_row, convention: str = "paper") -> float:
        per = (
            self.sublayer_linear
            if convention == "paper"
            else [a + b for a, b in zip(self.sublayer_linear, self.sublayer_attention)]
        )
        glue = sum(cost for members, cost in self.block_glue if any(compute_row[i] for i in members))
        return self.always_linear + glue + sum(m for m, c in zip(per, compute_row) if c)

    @property
    def fixed(self) -> float:
        """What an evaluation costs besides its sub-layers if every block is entered (the glue counted as paid)."""
        return self.always_linear + sum(cost for _, cost in self.block_glue)

    def full(self, convention: str = "paper") -> float:
        return self.per_evaluation([True] * len(self.sublayer_linear), convention)

    def plan_total(self, plan, convention: str = "paper") -> float:
        """MACs of a whole sampling run under a CachePlan (batch 1), forecasting arithmetic included."""
        total = sum(self.per_evaluation(row, convention) for row in plan.compute.tolist())
        return total + self.forecast_macs(plan)

    def fraction(self, plan) -> float:
        """MACs of the plan's run over the uncached run of the same evaluations (paper convention)."""
        return self.plan_total(plan) / (self.full() * plan.num_steps)

    def forecast_macs(self, plan) -> float:
        """The element-wise multiply-adds a plan spends on forecasts and on updating their differences."""
        if not plan.forecasts:
            return 0.0
        if len(self.sublayer_outputs) != plan.num_sublayers:
            raise ValueError("this MacProfile has no sub-layer output sizes: make it with profile_macs()")
        used, updated = plan.forecast_orders()
        per_sublayer = (used + updated).sum(0).tolist()  # multiply-adds per output element, summed over steps
        return float(sum(n * size for n, size in zip(per_sublayer, self.sublayer_outputs)))


def profile_macs(preset: str, **overrides) -> MacProfile:
    with torch.device("meta"):
        model = create_model(preset, **overrides)
    return _count(model)


def _count(model: nn.Module) -> MacProfile:
    counts: dict[nn.Module, float] = {}

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            counts[module] = counts.get(module, 0.0) + output.numel() * module.in_features
        else:
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            counts[module] = counts.get(module, 0.0) + output.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device="meta")
    tokens: list[int] = []
    subs = sublayers(model)
    shape_hooks = [m.register_forward_hook(lambda mod, i, o: tokens.append(o.shape[1])) for m in subs[0::2]]
    outputs: list[float] = []  # output elements of each sub-layer, in call order = router order
    shape_hooks += [m.register_forward_hook(lambda mod, i, o: outputs.append(float(o.numel()))) for m in subs]
    try:
        model(x, torch.zeros(1, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"))
    finally:
        for h in handles + shape_hooks:
            h.remove()
    sub_linear = [sum(v for m, v in counts.items() if any(m is c for c in s.modules())) for s in subs]
    attention = []
    for i, s in enumerate(subs):
        attention.append(2.0 * tokens[i // 2] ** 2 * s.proj.in_features if i % 2 == 0 else 0.0)
    return MacProfile(sub_linear, attention, sum(counts.values()) - sum(sub_linear), outputs)


# ------------------------------------------------------------------------------------------- measured, any model
_LINEAR_OPS = ("aten.mm", "aten.addmm", "aten.convolution", "aten._convolution")  # what the paper convention counts
_ATTENTION_OPS = ("aten._scaled_dot_product", "aten.bmm", "aten.baddbmm")  # attention matmuls (fused or not)


def _attention_formula():
    """The FLOP counter's SDPA formula for the CPU kernel it leaves out (2 x the MACs of QK^T and AV)."""
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}


def _split_counts(counts: dict) -> tuple[float, float]:
    """(linear MACs, attention MACs) of one module's FLOP counts (FLOPs = 2 x MACs)."""
    linear = attention = 0.0
    for op, flops in counts.items():
        name = str(op)
        if name.startswith(_ATTENTION_OPS):
            attention += flops / 2
        elif name.startswith(_LINEAR_OPS):
            linear += flops / 2
    return linear, attention


@torch.no_grad()
def measure_macs(model: nn.Module, call) -> MacProfile:
    """The MAC profile of one model evaluation, measured: `call()` runs the model once on one image (batch 1, one
    call, as the paper counts). Linear / Conv multiply-adds are the "paper" convention; attention matmuls are added
    in the "analytic" one."""
    from torch.utils.flop_counter import FlopCounterMode

    subs = describe(model)
    names = {id(m): n for n, m in model.named_modules()}
    root = type(model).__name__
    outputs = [0.0] * len(subs)

    def numel(out) -> float:
        if isinstance(out, torch.Tensor):
            return float(out.numel())
        return float(sum(o.numel() for o in out if isinstance(o, torch.Tensor)))

    hooks = [
        s.module.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, outputs[i] + numel(out)))
        for i, s in enumerate(subs)
    ]
    try:
        with FlopCounterMode(display=False, depth=None, custom_mapping=_attention_formula()) as counter:
            call()
    finally:
        for h in hooks:
            h.remove()
    counts = counter.get_flop_counts()

    def cost(module: nn.Module) -> tuple[float, float]:
        key = f"{root}.{names[id(module)]}"
        return _split_counts(counts.get(key, {}))

    claimed: set[int] = set()  # an input shared by several sub-layers counts once, with its first reader
    linear, attention = [], []
    for s in subs:
        parts = [s.module] + [m for m in s.inputs if id(m) not in claimed]
        claimed.update(id(m) for m in s.inputs)
        costs = [cost(m) for m in parts]
        linear.append(sum(c[0] for c in costs))
        attention.append(sum(c[1] for c in costs))
    total_linear, _ = _split_counts(counts["Global"])
    return MacProfile(linear, attention, total_linear - sum(linear), outputs)


# ------------------------------------------------------------------------------------------- memory of a plan
def plan_peak_bytes(plan, sublayer_outputs: list[float], batch: int = 1, element_size: int = 4, calls: int = 1) -> int:
    """The most bytes of stored outputs, differences and forecast buffers a plan's run holds at once: the engine's
    own accounting (RunPlan), run on shape-only tensors, so it costs nothing at any model size.

    sublayer_outputs: output elements of each sub-layer for one image (MacProfile.sublayer_outputs); batch: images
    per model call; calls: model calls per evaluation that keep their own caches (2 with two-call guidance)."""
    from .hooks import RunPlan

    if len(sublayer_outputs) != plan.num_sublayers:
        raise ValueError(f"{len(sublayer_outputs)} sub-layer sizes for a plan of {plan.num_sublayers} sub-layers")
    dtype = {1: torch.int8, 2: torch.float16, 4: torch.float32, 8: torch.float64}[element_size]
    outputs = [torch.empty(int(n) * batch, dtype=dtype, device="meta") for n in sublayer_outputs]
    runner = RunPlan(plan)
    with torch.no_grad():
        for j in range(plan.num_steps):
            for slot in range(calls):
                for index, out in enumerate(outputs):
                    runner(j, slot, index, lambda out=out: out * 1, (), {})
    return runner.peak_bytes
