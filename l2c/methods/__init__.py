"""Every caching / step-reduction method of the sweep, one module each, registered by name (`--methods`).

Each entry is a MethodSpec: a budget knob, its default values and knob value -> Point (l2c.methods.base).
"""

from __future__ import annotations

from .base import MethodSpec, Point, SweepContext, plan_macs
from .delta_dit import DELTA_DIT
from .drop import DROP
from .fewer_steps import DPM_2M, FEWER_STEPS
from .first_block import FIRST_BLOCK
from .fora import FORA
from .l2c import L2C_LAMBDA, L2C_THETA
from .learned import LEARNED
from .manual import BOTTOM, ERROR, RANDOM, TOP
from .smoothcache import SMOOTHCACHE
from .taylorseer import TAYLORSEER_O1, TAYLORSEER_O2, TAYLORSEER_O2_NEWTON

METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        L2C_THETA,
        L2C_LAMBDA,
        LEARNED,
        FEWER_STEPS,
        DPM_2M,
        FORA,
        TAYLORSEER_O1,
        TAYLORSEER_O2,
        TAYLORSEER_O2_NEWTON,
        DELTA_DIT,
        DROP,
        SMOOTHCACHE,
        RANDOM,
        BOTTOM,
        TOP,
        ERROR,
        FIRST_BLOCK,
    )
}

__all__ = ["METHODS", "MethodSpec", "Point", "SweepContext", "plan_macs"]
