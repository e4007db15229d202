"""Network outputs extracted once per image set, reused by every metric and baseline."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .domain_encoder import DomainEncoder
from .networks import InceptionFeatures

logger = logging.getLogger(__name__)

BATCH = 64


@dataclass
class DomainOutputs:
    """Domain-encoder outputs of N images (embedding, scene probabilities, log2 GSD, season)."""

    embedding: np.ndarray
    scene_probs: np.ndarray
    log2_gsd: np.ndarray
    season: np.ndarray

    def subset(self, index: np.ndarray) -> DomainOutputs:
        return DomainOutputs(self.embedding[index], self.scene_probs[index], self.log2_gsd[index], self.season[index])


@torch.no_grad()
def domain_outputs(encoder: DomainEncoder, images: torch.Tensor, desc: str = "domain features") -> DomainOutputs:
    device = next(encoder.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {"embedding": [], "scene": [], "gsd": [], "season": []}
    for start in tqdm(range(0, len(images), BATCH), desc=desc, leave=False, disable=len(images) <= BATCH):
        out = encoder(images[start:start + BATCH].to(device))
        parts["embedding"].append((out["embedding"] / float(encoder.config.feature_scale)).cpu())
        parts["scene"].append(out["scene_logits"].softmax(-1).cpu())
        parts["gsd"].append(out["log2_gsd"].cpu())
        parts["season"].append(out["season_logits"].argmax(-1).cpu())
    return DomainOutputs(
        torch.cat(parts["embedding"]).double().numpy(),
        torch.cat(parts["scene"]).double().numpy(),
        torch.cat(parts["gsd"]).double().numpy(),
        torch.cat(parts["season"]).numpy(),
    )


@dataclass
class InceptionOutputs:
    features: np.ndarray
    logits: np.ndarray | None

    def subset(self, index: np.ndarray) -> InceptionOutputs:
        return InceptionOutputs(self.features[index], None if self.logits is None else self.logits[index])


@torch.no_grad()
def inception_outputs(net: InceptionFeatures, images: torch.Tensor, desc: str = "inception features") -> InceptionOutputs:
    feats, logits = [], []
    for start in tqdm(range(0, len(images), BATCH), desc=desc, leave=False, disable=len(images) <= BATCH):
        batch = images[start:start + BATCH]
        feats.append(net.features(batch).double())
        lg = net.logits(batch)
        logits.append(None if lg is None else lg.double())
    return InceptionOutputs(
        torch.cat(feats).numpy(), None if any(lg is None for lg in logits) else torch.cat(logits).numpy()
    )
