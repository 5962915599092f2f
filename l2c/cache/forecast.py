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

Positions. By default an evaluation sits at its index j. Given `pos` (one number per evaluation: the sampler's time
t, σ, or log-SNR; CachePlan.positions), every gap and every k above is measured in it instead (j - j0 becomes
pos[j] - pos[j0]): samplers that space their evaluations unevenly in t (a shifted flow-matching schedule) then
extrapolate along the variable the outputs actually move with. Newton's form stays the interpolating polynomial, now in
that variable.

FoCa (Forecast then Calibrate, Zheng et al. 2025) treats the output as the solution of an ODE in the position s and
steps it with a predictor-corrector, recursively across the evaluations it is not computed:

    predictor (BDF2 with the slope of the last two values):  P = y_p + (s - s_p)·g_p
    corrector (Heun, anchored at the last computation s0):   y = f0 + (s - s0)/2 · (F1 + g),  g = (P - y_p)/(s - s_p)

where y_p is the last value the forecast produced (at s_p) and g_p the slope between the last two values, forecast or
computed. At the next computation the slope between the last forecast and the computed output, S, becomes the local
slope the next gap starts from: a forecast that missed corrects the next one. Every value is f0 + a·F1 + b·S with
scalars a, b kept on the host, so a FoCa forecast is two fused ops, S is one more buffer (none while S = F1: no FoCa
value since the previous computation) and it sums in compiled blocks like any forecast.
"""

from __future__ import annotations

import torch


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


class SublayerHistory:
    """The outputs of one sub-layer (in one model-call slot) that later evaluations reuse or extrapolate."""

    __slots__ = ("newton", "pos", "f0", "j0", "j1", "order", "f1", "f2", "out", "slope", "roll")

    def __init__(self, newton: bool, pos: list[float] | None = None):
        self.newton = newton
        self.pos = pos  # the position of each evaluation (None: its index)
        self.f0: torch.Tensor | None = None  # last computed output
        self.j0 = self.j1 = 0  # evaluation indices of the last two computations
        self.order = -1  # differences held: -1 none (empty), 0 output only, 1 F1, 2 F1 and F2
        self.f1: torch.Tensor | None = None  # F1 buffer
        self.f2: torch.Tensor | None = None  # F2 buffer
        self.out: torch.Tensor | None = None  # where forecasts are written (sampling)
        self.slope: torch.Tensor | None = None  # FoCa's S (None: S = F1)
        # FoCa's last value as (s_p, a_p, b_p, c_p, d_p): y_p = f0 + a_p·F1 + b_p·S at s_p, slope g_p = c_p·F1 + d_p·S;
        # None: no FoCa value since the last computation
        self.roll: tuple | None = None

    def _at(self, j: int):
        return j if self.pos is None else self.pos[j]

    def nbytes(self) -> int:
        return _nbytes(self.f0) + _nbytes(self.f1) + _nbytes(self.f2) + _nbytes(self.out) + _nbytes(self.slope)

    def copy(self) -> SublayerHistory:
        """A copy that running on does not change: the difference buffers, updated in place, are cloned; f0 is
        shared (a history replaces it, never writes it); the forecast buffer is scratch and is allocated again."""
        twin = SublayerHistory(self.newton, self.pos)
        twin.f0, twin.j0, twin.j1, twin.order, twin.roll = self.f0, self.j0, self.j1, self.order, self.roll
        twin.f1, twin.f2, twin.slope = (None if t is None else t.clone() for t in (self.f1, self.f2, self.slope))
        return twin

    def push(self, out: torch.Tensor, j: int, want: int) -> None:
        """Record the output computed at evaluation j, keeping differences up to order `want` (when available)."""
        order = min(want, self.order + 1)
        if order >= 1:
            self._update_slope(out.detach(), j)  # reads the old F1 and S: before the differences move on
            self._update_differences(out.detach(), j, order)
        self.f0, self.j1, self.j0, self.order, self.roll = out, self.j0, j, order, None
        if order < 2:
            self.f2 = None  # not read again: free it
        if order < 1:
            self.f1 = self.out = self.slope = None

    def _update_slope(self, out: torch.Tensor, j: int) -> None:
        # FoCa's S: the slope from the last forecast value to this output, or F1 itself (kept as None) when nothing
        # was forecast by FoCa since the previous computation.
        if self.roll is None or self.order < 1:
            self.slope = None
            return
        s, a, b = self.roll[:3]
        gap = self._at(j) - s
        if self.slope is None:  # y_p = f0 + (a + b)·F1
            self.slope = torch.empty_like(out)
            torch.sub(out, self.f0, out=self.slope).sub_(self.f1, alpha=a + b).div_(gap)
        else:  # S <- (out - f0 - a·F1 - b·S) / gap, in place
            self.slope.mul_(-b).add_(self.f1, alpha=-a).add_(out).sub_(self.f0).div_(gap)

    def _update_differences(self, out: torch.Tensor, j: int, order: int) -> None:
        gap = self._at(j) - self._at(self.j0)
        if order == 1:
            if self.f1 is None or self.f1.shape != out.shape:
                self.f1 = torch.empty_like(out)
            torch.sub(out, self.f0, out=self.f1).div_(gap)
            return
        # F1_new goes into the F2 buffer (the old F2 is no longer needed); the F1 buffer, holding F1_old, then
        # becomes F2 = (F1_new - F1_old) / d; the two buffers swap names. Four passes, no allocation.
        fresh = self.f2 if self.f2 is not None and self.f2.shape == out.shape else torch.empty_like(out)
        torch.sub(out, self.f0, out=fresh).div_(gap)
        torch.sub(fresh, self.f1, out=self.f1).div_(self._at(j) - self._at(self.j1) if self.newton else gap)
        self.f1, self.f2 = fresh, self.f1

    def terms(self, j: int, order) -> tuple[torch.Tensor, list[tuple[torch.Tensor, float]]]:
        """The forecast at evaluation j as f0 and its (difference, coefficient) terms: f0 + sum(c * F).

        `order` is 1 or 2, capped at the highest order held (no terms: the stored output), or "foca" (see
        foca_terms). Compiled blocks sum the terms inside their graph, fused with the block's gate and residual;
        `forecast` sums them here.
        """
        if order == "foca":
            return self.foca_terms(j)
        order = min(order, self.order)
        if order <= 0:
            return self.f0, []
        s0 = self._at(self.j0)
        k = self._at(j) - s0
        terms = [(self.f1, k)]
        if order >= 2:
            terms.append((self.f2, k * (k + s0 - self._at(self.j1)) if self.newton else k * k / 2))
        return self.f0, terms

    def foca_terms(self, j: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, float]]]:
        """FoCa's value at evaluation j as terms (module docstring); advances its recursion, so call it once per
        evaluation. Falls back to the stored output while no F1 is held."""
        if self.order < 1:
            return self.f0, []
        s0, s = self._at(self.j0), self._at(j)
        sp, ap, bp, cp, dp = self.roll or (s0, 0.0, 0.0, 0.0, 1.0)  # after a computation: y_p = f0, g_p = S
        half = (s - s0) / 2
        a, b = half * (1 + cp), half * dp  # f0 + (s - s0)/2 · (F1 + g_p)
        h = s - sp
        self.roll = (s, a, b, (a - ap) / h, (b - bp) / h)
        if self.slope is None:
            return self.f0, [(self.f1, a + b)]
        return self.f0, [(self.f1, a), (self.slope, b)]

    def forecast(self, j: int, order) -> torch.Tensor:
        """The extrapolated output at evaluation j, at `order` or the highest order held (0 = the stored output), or
        FoCa's value (order "foca")."""
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

    def terms(self, j: int, order):
        """(f0, terms) with the output's structure: a tuple of f0s and a tuple of their term lists (None for a None
        element)."""
        each = [None if p is None else p.terms(j, order) for p in self.parts]
        f0 = self.kind(None if t is None else t[0] for t in each)
        return f0, self.kind(None if t is None else t[1] for t in each)

    def forecast(self, j: int, order):
        return self.kind(None if p is None else p.forecast(j, order) for p in self.parts)


def new_history(out, newton: bool, pos: list[float] | None = None):
    """An empty history fitting `out`: a tensor, or a tuple / list of tensors (and Nones); `pos`: the evaluations'
    positions (None: their indices)."""
    if isinstance(out, torch.Tensor):
        return SublayerHistory(newton, pos)
    if isinstance(out, (tuple, list)) and all(o is None or isinstance(o, torch.Tensor) for o in out):
        return TupleHistory([None if o is None else SublayerHistory(newton, pos) for o in out], type(out))
    raise TypeError(
        f"a cached sub-layer must return a tensor or a tuple of tensors, got {type(out).__name__}: "
        "this child cannot be cached as it is"
    )


def map_output(fn, out, *others):
    """fn applied to each tensor of a sub-layer's output (a tensor or a tuple of tensors / Nones), structure kept."""
    if isinstance(out, torch.Tensor):
        return fn(out, *others)
    return type(out)(None if o is None else fn(o, *(x[i] for x in others)) for i, o in enumerate(out))
