"""Samplers share one signature: sample_x(denoise, x, timesteps, *, callback=None, disable=None, **opts)."""

from .ddim import sample_ddim, sample_ddpm
from .dpm_solver import sample_dpm_solver, time_uniform
from .guidance import batched_cfg_denoiser, conditional_denoiser, separate_cfg_denoiser
from .schedules import NoiseScheduleVP, space_timesteps
from .seeds import StackedRandomGenerator, parse_int_list

__all__ = [
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
