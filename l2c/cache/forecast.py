"""What one sub-layer keeps of its computed outputs, and the forecasts made from it (Taylor / Newton).

A history holds the last computed output f0 (the tensor the sub-layer returned; kept, not copied), its evaluation
index j0, and up to two difference tensors F1, F2 that are updated in place whenever the sub-layer is computed:

    F1 <- (f - f0) / (j - j0)                    first divided difference (both forms)
    F2 <- (F1_new - F1_old) / d                  d = j - j1 ("newton") or j - j0 ("taylorseer", its own form)

so that a forecast at j = j0 + k is one fused op per order:

    order 1:  f0 + k·F1                          torch.add(f0, F1, alpha=k)
    order 2:  ... + c·F2,  c = k·(k + j0 - j1) ("newton") or k²/2 ("taylorseer")

The buffers are allocated on first use and then rewritten in place, so nothing is allocated per evaluation. That
includes the forecast itself when autograd is off (sampling): it is written into one output buffer per history, so
the tensor a forecast returns is overwritten by the sub-layer's next forecast (the blocks add it to the residual
stream at once; clone it to keep it). With autograd on, each forecast is a new tensor. On a CPU a fresh large
tensor costs page faults worth several element-wise passes, which is why the buffers matter.
"""

from __future__ import annotations

import torch


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


class SublayerHistory:
    """The outputs of one sub-layer (in one model-call slot) that later evaluations reuse or extrapolate."""

    __slots__ = ("newton", "f0", "j0", "j1", "order", "f1", "f2", "out")

    def __init__(self, newton: bool):
        self.newton = newton
        self.f0: torch.Tensor | None = None  # last computed output
        self.j0 = self.j1 = 0  # evaluation indices of the last two computations
        self.order = -1  # differences held: -1 none (empty), 0 output only, 1 F1, 2 F1 and F2
        self.f1: torch.Tensor | None = None  # F1 buffer
        self.f2: torch.Tensor | None = None  # F2 buffer
        self.out: torch.Tensor | None = None  # where forecasts are written (sampling)

    def nbytes(self) -> int:
        return _nbytes(self.f0) + _nbytes(self.f1) + _nbytes(self.f2) + _nbytes(self.out)

    def copy(self) -> SublayerHistory:
        """A copy that running on does not change: the difference buffers, updated in place, are cloned; f0 is
        shared (a history replaces it, never writes it); the forecast buffer is scratch and is allocated again."""
        twin = SublayerHistory(self.newton)
        twin.f0, twin.j0, twin.j1, twin.order = self.f0, self.j0, self.j1, self.order
        twin.f1 = None if self.f1 is None else self.f1.clone()
        twin.f2 = None if self.f2 is None else self.f2.clone()
        return twin

    def push(self, out: torch.Tensor, j: int, want: int) -> None:
        """Record the output computed at evaluation j, keeping differences up to order `want` (when available)."""
        order = min(want, self.order + 1)
        if order >= 1:
            self._update_differences(out.detach(), j, order)
        self.f0, self.j1, self.j0, self.order = out, self.j0, j, order
        if order < 2:
            self.f2 = None  # not read again: free it
        if order < 1:
            self.f1 = self.out = None

    def _update_differences(self, out: torch.Tensor, j: int, order: int) -> None:
        gap = j - self.j0
        if order == 1:
            if self.f1 is None or self.f1.shape != out.shape:
                self.f1 = torch.empty_like(out)
            torch.sub(out, self.f0, out=self.f1).div_(gap)
            return
        # F1_new goes into the F2 buffer (the old F2 is no longer needed); the F1 buffer, holding F1_old, then
        # becomes F2 = (F1_new - F1_old) / d; the two buffers swap names. Four passes, no allocation.
        fresh = self.f2 if self.f2 is not None and self.f2.shape == out.shape else torch.empty_like(out)
        torch.sub(out, self.f0, out=fresh).div_(gap)
        torch.sub(fresh, self.f1, out=self.f1).div_(j - self.j1 if self.newton else gap)
        self.f1, self.f2 = fresh, self.f1

    def terms(self, j: int, order: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, float]]]:
        """The forecast at evaluation j as f0 and its (difference, coefficient) terms: f0 + sum(c * F).

        `order` is capped at the highest order held (no terms: the stored output). Compiled blocks sum the terms
        inside their graph, fused with the block's gate and residual; `forecast` sums them here.
        """
        order = min(order, self.order)
        if order <= 0:
            return self.f0, []
        k = j - self.j0
        terms = [(self.f1, k)]
        if order >= 2:
            terms.append((self.f2, k * (k + self.j0 - self.j1) if self.newton else k * k / 2))
        return self.f0, terms

    def forecast(self, j: int, order: int) -> torch.Tensor:
        """The extrapolated output at evaluation j, at `order` or the highest order held (0 = the stored output)."""
        f0, terms = self.terms(j, order)
        if not terms:
            return f0
        (f1, c1), *higher = terms
        if torch.is_grad_enabled():
            out = torch.add(f0, f1, alpha=c1)
        else:
            if self.out is None or self.out.shape != f0.shape:
                self.out = torch.empty_like(f0)
            out = torch.add(f0, f1, alpha=c1, out=self.out)
        for f, c in higher:
            out.add_(f, alpha=c)
        return out


class TupleHistory:
    """The history of a sub-layer that returns a tuple (a joint attention's (image, text) pair): one
    SublayerHistory per tensor element, the structure kept (None elements stay None)."""

    __slots__ = ("parts", "kind")

    def __init__(self, parts: list, kind: type):
        self.parts = parts  # SublayerHistory per tensor element, None where the output element is None
        self.kind = kind  # tuple or list: what the sub-layer returned

    @property
    def order(self) -> int:
        return min(p.order for p in self.parts if p is not None)

    @property
    def f0(self):
        return self.kind(None if p is None else p.f0 for p in self.parts)

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.parts if p is not None)

    def copy(self) -> TupleHistory:
        return TupleHistory([None if p is None else p.copy() for p in self.parts], self.kind)

    def push(self, out, j: int, want: int) -> None:
        if len(out) != len(self.parts):
            raise ValueError(f"a sub-layer returned {len(out)} outputs after returning {len(self.parts)}")
        for part, value in zip(self.parts, out):
            if (part is None) != (value is None):
                raise ValueError("a sub-layer's output changed structure between evaluations (a None element)")
            if part is not None:
                part.push(value, j, want)

    def terms(self, j: int, order: int):
        return self.kind(None if p is None else p.terms(j, order) for p in self.parts)

    def forecast(self, j: int, order: int):
        return self.kind(None if p is None else p.forecast(j, order) for p in self.parts)


def new_history(out, newton: bool):
    """An empty history fitting `out`: a tensor, or a tuple / list of tensors (and Nones)."""
    if isinstance(out, torch.Tensor):
        return SublayerHistory(newton)
    if isinstance(out, (tuple, list)) and all(o is None or isinstance(o, torch.Tensor) for o in out):
        return TupleHistory([None if o is None else SublayerHistory(newton) for o in out], type(out))
    raise TypeError(
        f"a cached sub-layer must return a tensor or a tuple of tensors, got {type(out).__name__}: "
        "this child cannot be cached as it is"
    )


def map_output(fn, out, *others):
    """fn applied to each tensor of a sub-layer's output (a tensor or a tuple of tensors / Nones), structure kept."""
    if isinstance(out, torch.Tensor):
        return fn(out, *others)
    return type(out)(None if o is None else fn(o, *(x[i] for x in others)) for i, o in enumerate(out))
