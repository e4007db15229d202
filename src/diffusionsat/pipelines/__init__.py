"""Pipelines in diffusers style."""

from .pipeline_controlnet import (
    DiffusionSatControlNetPipeline,
    build_task_pipeline,
    controlnet_noise_pred,
    load_controlnet_pipeline,
    new_task_controlnet,
)
from .pipeline_diffusionsat import DiffusionSatPipeline, DiffusionSatPipelineOutput

__all__ = [
    "DiffusionSatPipeline",
    "DiffusionSatPipelineOutput",
    "DiffusionSatControlNetPipeline",
    "controlnet_noise_pred",
    "build_task_pipeline",
    "load_controlnet_pipeline",
    "new_task_controlnet",
]
