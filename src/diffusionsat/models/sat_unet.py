"""`SatUNet`: diffusers' `UNet2DConditionModel` plus DiffusionSat's metadata conditioning (SPEC §2).

Each normalised metadata value goes through the UNet's own sinusoidal ``time_proj`` and then its
own ``TimestepEmbedding`` MLP (``metadata_embedding.{i}``); the results are summed into the timestep
embedding. Parameter names match the original checkpoints, so original folders load unchanged.

Rather than copying diffusers' forward pass, the metadata rides through the ``class_labels`` slot
and is embedded in an override of :meth:`get_class_embed`, whose result diffusers adds to the
timestep embedding at exactly the place the original added its metadata embedding.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
from diffusers import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up in this module)
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput
from torch import nn

from ..metadata import METADATA_FIELDS, NUM_METADATA, ORIGINAL_UNKNOWN_VALUE


class _ClassAndMetadata(NamedTuple):
    class_labels: torch.Tensor | None
    metadata: torch.Tensor


def embed_metadata(
    metadata: torch.Tensor, time_proj: nn.Module, embeddings: nn.ModuleList, dtype: torch.dtype
) -> torch.Tensor:
    """Σᵢ embeddingsᵢ(time_proj(metadata[:, i])) — the original DiffusionSat metadata embedding."""
    batch, num = metadata.shape
    projected = time_proj(metadata.reshape(-1)).reshape(batch, num, -1).to(dtype)
    emb = embeddings[0](projected[:, 0])
    for i in range(1, num):
        emb = emb + embeddings[i](projected[:, i])
    return emb


def metadata_embedding_for(model: nn.Module, num_metadata: int) -> nn.ModuleList:
    """One ``TimestepEmbedding`` per metadata value, sized like ``model``'s timestep embedding."""
    channels = model.config.block_out_channels[0]
    time_embed_dim = model.time_embedding.linear_1.out_features
    return nn.ModuleList([TimestepEmbedding(channels, time_embed_dim) for _ in range(num_metadata)])


def check_metadata_tensor(metadata: torch.Tensor, batch: int, num_metadata: int) -> torch.Tensor:
    """Validate/broadcast a ``(batch, num_metadata)`` normalised metadata tensor."""
    if not torch.is_tensor(metadata):
        raise TypeError(f"metadata must be a (batch, {num_metadata}) tensor of normalised values")
    if metadata.ndim == 1:
        metadata = metadata[None]
    if metadata.ndim != 2 or metadata.shape[1] != num_metadata:
        raise ValueError(f"metadata must have shape (batch, {num_metadata}), got {tuple(metadata.shape)}")
    if metadata.shape[0] == 1 and batch > 1:
        metadata = metadata.expand(batch, -1)
    if metadata.shape[0] != batch:
        raise ValueError(f"metadata batch {metadata.shape[0]} does not match sample batch {batch}")
    return metadata


def _unet_parameters() -> list[inspect.Parameter]:
    init = inspect.unwrap(UNet2DConditionModel.__init__)
    return list(inspect.signature(init).parameters.values())


class SatUNet(UNet2DConditionModel):
    """Metadata-conditioned UNet (all ``UNet2DConditionModel`` config keys, plus the three below).

    Args:
        use_metadata: add the metadata embeddings (original config key).
        num_metadata: number of metadata values (7 in the original: lon, lat, gsd, cloud, y, m, d).
        metadata_unknown_value: the normalised value that means "unknown" (0.0 in the original);
            pipelines use it for missing fields and for the unconditional CFG branch.
        guidance_anchor_fields: metadata fields the unconditional CFG branch keeps when a request gives
            them all (location-anchored guidance, trained with ``anchor_model``; docs/training.md);
            ``None``: the plain all-unknown branch.
    """

    def __init__(
        self,
        use_metadata: bool = True,
        num_metadata: int = NUM_METADATA,
        metadata_unknown_value: float = ORIGINAL_UNKNOWN_VALUE,
        guidance_anchor_fields: list[str] | None = None,
        **unet_kwargs: Any,
    ):
        super().__init__(**unet_kwargs)
        unknown_fields = [f for f in guidance_anchor_fields or () if f not in METADATA_FIELDS]
        if unknown_fields:
            raise ValueError(f"guidance_anchor_fields: unknown field(s) {', '.join(map(repr, unknown_fields))}; "
                             f"allowed {', '.join(METADATA_FIELDS)}")
        if use_metadata and self.config.class_embeddings_concat:
            raise ValueError("use_metadata is incompatible with class_embeddings_concat=True")
        self.metadata_embedding = metadata_embedding_for(self, num_metadata) if use_metadata else None

    def zero_init_metadata_embedding(self) -> None:
        """(Re)initialise the metadata MLPs for fine-tuning a pretrained UNet: fresh first layers and
        zero output layers, so the UNet is unchanged at step 0 (and weights that a loader left
        uninitialised never reach the output)."""
        if self.metadata_embedding is not None:
            for mlp in self.metadata_embedding:
                mlp.linear_1.reset_parameters()
                nn.init.zeros_(mlp.linear_2.weight)
                nn.init.zeros_(mlp.linear_2.bias)

    def get_class_embed(self, sample: torch.Tensor, class_labels: Any) -> torch.Tensor | None:
        metadata = None
        if isinstance(class_labels, _ClassAndMetadata):
            class_labels, metadata = class_labels
        class_emb = super().get_class_embed(sample=sample, class_labels=class_labels)
        if self.metadata_embedding is None or metadata is None:
            return class_emb
        md_emb = embed_metadata(metadata, self.time_proj, self.metadata_embedding, sample.dtype)
        return md_emb if class_emb is None else class_emb + md_emb

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        metadata: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> UNet2DConditionOutput | tuple:
        """Same as ``UNet2DConditionModel.forward`` plus ``metadata``: (batch, num_metadata),
        already normalised. ``None`` means every field unknown."""
        if self.metadata_embedding is not None:
            batch = sample.shape[0]
            if metadata is None:
                metadata = sample.new_full(
                    (batch, self.config.num_metadata), self.config.metadata_unknown_value, dtype=torch.float32
                )
            metadata = check_metadata_tensor(metadata, batch, self.config.num_metadata)
            class_labels = _ClassAndMetadata(class_labels, metadata.to(sample.device))
        return super().forward(sample, timestep, encoder_hidden_states, class_labels=class_labels, **kwargs)


# The config is the constructor's arguments: expose every UNet2DConditionModel argument in
# SatUNet's signature so that `register_to_config` records them and `from_pretrained` passes them.
def _merge_signature() -> None:
    own = list(inspect.signature(SatUNet.__init__).parameters.values())
    names = {p.name for p in own}
    merged = [own[0]]
    merged += [p for p in _unet_parameters()[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name not in names]
    merged += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD]
    merged = [p if i == 0 else p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for i, p in enumerate(merged)]
    init = SatUNet.__init__
    init.__signature__ = inspect.Signature(merged)  # type: ignore[attr-defined]
    SatUNet.__init__ = register_to_config(init)  # type: ignore[method-assign]


_merge_signature()
