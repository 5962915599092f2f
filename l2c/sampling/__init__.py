"""Samplers (one class each, in SAMPLERS), guidance, schedules and per-image seeds."""

from .flow_matching import DiffusersFlowMatchEuler, calculate_shift
from .guidance import batched_cfg_denoiser, conditional_denoiser, separate_cfg_denoiser
from .samplers import (
    DDIM,
    DDPM,
    SAMPLERS,
    DPMSolver2M,
    DPMSolver2S,
    Sampler,
    make_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpm_solver,
    time_uniform,
)
from .schedules import NoiseScheduleVP, space_timesteps
from .seeds import StackedRandomGenerator, parse_int_list

SAMPLERS[DiffusersFlowMatchEuler.name] = DiffusersFlowMatchEuler  # here, because it subclasses a samplers.py class

__all__ = [
    "DDIM",
    "DDPM",
    "DiffusersFlowMatchEuler",
    "calculate_shift",
    "DPMSolver2M",
    "DPMSolver2S",
    "SAMPLERS",
    "Sampler",
    "make_sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpm_solver",
    "time_uniform",
    "batched_cfg_denoiser",
    "conditional_denoiser",
    "separate_cfg_denoiser",
    "NoiseScheduleVP",
    "space_timesteps",
    "StackedRandomGenerator",
    "parse_int_list",
]
