"""Evaluation: metrics with their uncertainty, the project's domain encoder, baselines and reports.

Public API::

    from diffusionsat.evaluation import EvaluationConfig, evaluate, load_domain_encoder
"""

from __future__ import annotations

from .dataset import EvalRecord, load_records
from .domain_encoder import DomainEncoder, load_domain_encoder, season_of
from .evaluate import TASKS, EvaluationConfig, evaluate
from .networks import InceptionFeatures, LPIPSDistance, PretrainedWeightsMissing, load_clip, load_lpips
from .stats import Estimate

__all__ = [
    "TASKS",
    "DomainEncoder",
    "Estimate",
    "EvalRecord",
    "EvaluationConfig",
    "InceptionFeatures",
    "LPIPSDistance",
    "PretrainedWeightsMissing",
    "evaluate",
    "load_clip",
    "load_domain_encoder",
    "load_lpips",
    "load_records",
    "season_of",
]
