"""l2c: Learning-to-Cache (Ma et al., NeurIPS 2024) for diffusion transformers."""

from .cache import CacheEngine, CachePlan, attach_cache
from .integrations.diffusers_apply import apply
from .models import MODELS, create_model
from .router import Router, import_official, load_router, save_router

__version__ = "0.1.0"
__all__ = [
    "apply",
    "CacheEngine",
    "CachePlan",
    "attach_cache",
    "MODELS",
    "create_model",
    "Router",
    "import_official",
    "load_router",
    "save_router",
]
