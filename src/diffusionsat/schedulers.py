"""Interchangeable diffusers schedulers by short name (CLI ``--scheduler``, REST ``scheduler``)."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "pndm": PNDMScheduler,
    "unipc": UniPCMultistepScheduler,
}


def make_scheduler(name: str, base: SchedulerMixin) -> SchedulerMixin:
    """A scheduler of kind ``name`` configured like ``base`` (same betas, prediction type)."""
    key = name.lower()
    if key not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r}: unknown; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[key].from_config(base.config)


def scheduler_name(scheduler: SchedulerMixin) -> str:
    """Short name of a scheduler instance (class name when it has none)."""
    for key, cls in SCHEDULERS.items():
        if type(scheduler) is cls:
            return key
    return type(scheduler).__name__
