"""Pipelines in diffusers style."""

from .pipeline_diffusionsat import DiffusionSatPipeline, DiffusionSatPipelineOutput

__all__ = ["DiffusionSatPipeline", "DiffusionSatPipelineOutput"]
