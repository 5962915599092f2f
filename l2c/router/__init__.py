from .files import import_official, load_router, save_router
from .router import Router, StraightThroughThreshold

__all__ = ["Router", "StraightThroughThreshold", "load_router", "save_router", "import_official"]
