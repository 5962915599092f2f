"""l2c for diffusers users, in one import: `from l2c.integrations.diffusers import apply`.

apply (diffusers_apply): learned caching on DiTPipeline / DiTTransformer2DModel / PixArtTransformer2DModel.
conversion (diffusers_convert): our DiT <-> DiTTransformer2DModel, diffusers folders.
interchange (schedules): SmoothCache JSON schedules and cache-dit step masks.
"""

from .diffusers_apply import DiffusersCache, apply, resolve_plan
from .diffusers_convert import (
    ddim_scheduler_config,
    diffusers_to_dit,
    dit_to_diffusers,
    export_diffusers,
    is_diffusers_folder,
    load_diffusers_folder,
    set_timestep_shift,
)
from .schedules import (
    components_of,
    from_cache_dit_mask,
    from_smoothcache,
    save_smoothcache,
    to_cache_dit_mask,
    to_smoothcache,
)

__all__ = [
    "DiffusersCache",
    "apply",
    "resolve_plan",
    "ddim_scheduler_config",
    "diffusers_to_dit",
    "dit_to_diffusers",
    "export_diffusers",
    "is_diffusers_folder",
    "load_diffusers_folder",
    "set_timestep_shift",
    "components_of",
    "from_cache_dit_mask",
    "from_smoothcache",
    "save_smoothcache",
    "to_cache_dit_mask",
    "to_smoothcache",
]
