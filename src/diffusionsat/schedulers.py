"""Interchangeable diffusers schedulers by short name (CLI ``--scheduler``, REST ``scheduler``).

The names are plain strings so that validating ``--scheduler`` does not import diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

#: Short name → diffusers scheduler class name.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}

#: What DPM-Solver++ steps to last. diffusers before 0.27 (the original DiffusionSat's) ended on the
#: training schedule's smallest sigma; newer diffusers default to "zero" (one more full denoising
#: step). A scheduler config that names ``final_sigmas_type`` keeps its own choice.
ORIGINAL_FINAL_SIGMAS_TYPE = "sigma_min"


def check_scheduler(name: str) -> str:
    """The short name ``name`` in lower case, or a ValueError naming the field and the choices."""
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r}: unknown; choose one of {', '.join(SCHEDULERS)}")
    return key


def make_scheduler(name: str, base: SchedulerMixin) -> SchedulerMixin:
    """A scheduler of kind ``name`` configured like ``base`` (same betas, prediction type).

    ``dpm++`` ends on ``final_sigmas_type="sigma_min"`` as the original's diffusers did, unless
    ``base``'s saved config sets ``final_sigmas_type`` itself.
    """
    import diffusers

    key = check_scheduler(name)
    cls = getattr(diffusers, SCHEDULERS[key])
    config = dict(base.config)
    defaulted = set(config.get("_use_default_values", ()))
    if key == "dpm++" and ("final_sigmas_type" not in config or "final_sigmas_type" in defaulted
                           or type(base) is not cls):
        config["final_sigmas_type"] = ORIGINAL_FINAL_SIGMAS_TYPE
    return cls.from_config(config)


def scheduler_name(scheduler: SchedulerMixin) -> str:
    """Short name of a scheduler instance (class name when it has none)."""
    for key, cls_name in SCHEDULERS.items():
        if type(scheduler).__name__ == cls_name:
            return key
    return type(scheduler).__name__
