from .engine import CacheEngine, attach_cache
from .layout import LAYOUTS, BlockLayout, layout_for, sublayers
from .plan import CachePlan, cache_steps_for

__all__ = [
    "CacheEngine",
    "attach_cache",
    "LAYOUTS",
    "BlockLayout",
    "layout_for",
    "sublayers",
    "CachePlan",
    "cache_steps_for",
]
