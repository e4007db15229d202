"""Text + metadata → satellite image (SPEC §3), in the shape of diffusers' Stable Diffusion pipeline."""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..metadata import METADATA_FIELDS, MetadataLike, metadata_tensor
from ..models.sat_unet import SatUNet

logger = logging.getLogger(__name__)

MetadataInput = MetadataLike | Sequence[MetadataLike] | torch.Tensor


@dataclass
class DiffusionSatPipelineOutput(BaseOutput):
    """``images``: PIL list, ``(B, H, W, C)`` numpy array in [0, 1], or ``(B, C, H, W)`` tensor."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


def combine_guidance(
    noise: torch.Tensor, guidance_scale: float, metadata_guidance_scale: float | None
) -> torch.Tensor:
    """Classifier-free guidance over text (and optionally separately over metadata).

    Two branches ``[uncond, cond]``: ``u + g (c − u)``. Three branches ``[uncond, text, text+md]``:
    ``u + g (t − u) + g_md (c − t)``, so text and metadata guidance can be tuned independently.
    """
    if metadata_guidance_scale is None:
        uncond, cond = noise.chunk(2)
        return uncond + guidance_scale * (cond - uncond)
    uncond, text, full = noise.chunk(3)
    return uncond + guidance_scale * (text - uncond) + metadata_guidance_scale * (full - text)


def anchored_unconditional_metadata(metadata: torch.Tensor, fields: Sequence[str], unknown: float) -> torch.Tensor:
    """Metadata of guidance's negative branch: all unknown, except ``fields`` in the rows that give all
    of them (location-anchored guidance, docs/training.md); with no fields, plain all-unknown CFG."""
    out = torch.full_like(metadata, unknown)
    if not fields:
        return out
    index = torch.tensor([METADATA_FIELDS.index(f) for f in fields], device=metadata.device)
    given = (metadata[:, index] != unknown).all(dim=1, keepdim=True)
    out[:, index] = torch.where(given, metadata[:, index], out[:, index])
    return out


def rescale_guidance(guided: torch.Tensor, conditional: torch.Tensor, factor: float) -> torch.Tensor:
    """Mix ``guided`` with a copy rescaled to the conditional prediction's per-sample std (Lin et al.
    2024, §3.4; diffusers' ``guidance_rescale``, whose module import pulls in image processors)."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * guided


class DiffusionSatPipeline(DiffusionPipeline):
    r"""Generate satellite images from a prompt and metadata (lon, lat, GSD, cloud cover, date).

    Args:
        vae: ``AutoencoderKL`` of a latent model, or ``None`` for a pixel-space UNet.
        text_encoder: a transformers text model (CLIP for full-size models).
        tokenizer: its tokenizer.
        unet: a :class:`~diffusionsat.SatUNet`.
        scheduler: any diffusers scheduler.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        vae: AutoencoderKL | None,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        unet: SatUNet,
        scheduler: KarrasDiffusionSchedulers,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, checkpoint: int | None = None, **kwargs):
        """``DiffusionPipeline.from_pretrained`` that also loads the original DiffusionSat layouts.

        ``pretrained_model_name_or_path`` may be a pipeline folder, a hub id (huggingface_hub cache,
        ``HF_HUB_OFFLINE=1`` friendly), an original run folder (components at the root, the UNet in
        ``checkpoint-<N>/unet_ema`` or ``unet``: latest N, EMA preferred) or one ``checkpoint-<N>``
        of it; ``checkpoint=N`` picks N. ``model_index.json`` entries diffusers cannot import
        (``[null, "SatUNet"]``) are loaded with our classes.
        """
        from ..loading import HUB_KWARGS, local_model_folder, model_layout

        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        layout = model_layout(local_model_folder(pretrained_model_name_or_path, **hub), checkpoint)
        if layout.checkpoint is not None:
            logger.info("loading the UNet of %s from %s", layout.root, layout.checkpoint)
        kwargs.update(load_custom_components(cls, layout, kwargs))
        return super().from_pretrained(str(layout.root), **kwargs)

    # --- helpers, one job each --------------------------------------------------------------------
    @property
    def metadata_unknown_value(self) -> float:
        return float(getattr(self.unet.config, "metadata_unknown_value", 0.0))

    @property
    def guidance_anchor_fields(self) -> tuple[str, ...]:
        """Fields the UNet was trained to keep in guidance's negative branch (``anchor_model``)."""
        return tuple(getattr(self.unet.config, "guidance_anchor_fields", None) or ())

    @property
    def uses_metadata(self) -> bool:
        return bool(getattr(self.unet.config, "use_metadata", False))

    @property
    def default_size(self) -> int:
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.vae_scale_factor

    def check_inputs(self, prompt, height, width, num_inference_steps, guidance_scale, num_images_per_prompt):
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not all(isinstance(p, str) for p in prompt)):
            raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"{name}={value!r}: must be a positive multiple of {multiple} for this model")
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= 1000:
            raise ValueError(f"num_inference_steps={num_inference_steps!r}: must be an integer in [1, 1000]")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale={guidance_scale!r}: must be a finite number >= 0")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r}: must be an integer >= 1")

    def encode_prompt(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """Text embeddings ``(len(prompts), seq, dim)`` from the tokenizer + text encoder."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        embeds = self.text_encoder(tokens.input_ids.to(device))[0]
        return embeds.to(dtype=self.unet.dtype)

    def prepare_metadata(self, metadata: MetadataInput, batch: int, device: torch.device) -> torch.Tensor:
        """Normalise (SPEC §1) and broadcast metadata to ``(batch, 7)``.

        Accepts one :class:`SatMetadata`/dict for all prompts, one per prompt, or an already
        normalised tensor (as the original pipeline took).
        """
        if torch.is_tensor(metadata):
            tensor = metadata.to(device=device, dtype=torch.float32)
            tensor = tensor[None] if tensor.ndim == 1 else tensor
        else:
            items = list(metadata) if isinstance(metadata, (list, tuple)) else [metadata]
            tensor = metadata_tensor(items, unknown_value=self.metadata_unknown_value, device=device)
        if tensor.shape[0] == 1:
            tensor = tensor.expand(batch, -1)
        if tensor.shape[0] != batch:
            raise ValueError(f"got {tensor.shape[0]} metadata entries for {batch} prompts; give one or one per prompt")
        return tensor

    def prepare_latents(self, batch, height, width, dtype, device, generator, latents=None):
        channels = self.unet.config.in_channels
        shape = (batch, channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Model space → images in [-1, 1] (identity for pixel-space models)."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]

    # --- the algorithm ----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        metadata: MetadataInput = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        metadata_guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        negative_prompt: str | list[str] | None = None,
        anchored_guidance: bool = True,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> DiffusionSatPipelineOutput | tuple:
        """Generate images.

        Args:
            prompt: text prompt(s).
            metadata: :class:`SatMetadata`/dict (or a list, one per prompt); ``None`` = unknown.
            guidance_scale: classifier-free guidance over text+metadata; ``<= 1`` disables CFG.
            metadata_guidance_scale: if given, a separate guidance scale for metadata (3 branches).
            guidance_rescale: in [0, 1]; pulls the guided prediction's spread back towards the
                conditional one's (Lin et al. 2024, §3.4), against over-saturation at high guidance
                with zero-terminal-SNR models.
            negative_prompt: replaces the empty prompt in the unconditional branch.
            anchored_guidance: for a UNet trained with a guidance anchor (``guidance_anchor_fields``,
                e.g. lon/lat), the unconditional branch of a request that gives those fields keeps
                them; False = the all-unknown branch. No effect on other UNets.
            callback: ``callback(step, timestep, latents)`` after each denoising step.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
        """
        # 1. Check inputs and define call parameters
        height = height or self.default_size
        width = width or self.default_size
        self.check_inputs(prompt, height, width, num_inference_steps, guidance_scale, num_images_per_prompt)
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale={guidance_rescale!r}: must be in [0, 1]")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type={output_type!r}: must be one of pil, np, pt, latent")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        three_branch = do_cfg and metadata_guidance_scale is not None and self.uses_metadata

        # 2. Encode prompt (conditional, and unconditional for CFG) and metadata
        cond_text = self.encode_prompt(prompts, device)
        cond_md = self.prepare_metadata(metadata, len(prompts), device)
        text, md = cond_text, cond_md
        if do_cfg:
            negatives = negative_prompt if negative_prompt is not None else ""
            negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
            if len(negatives) != len(prompts):
                raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
            uncond_text = self.encode_prompt(negatives, device)
            anchor = self.guidance_anchor_fields if anchored_guidance and self.uses_metadata else ()
            uncond_md = anchored_unconditional_metadata(cond_md, anchor, self.metadata_unknown_value)
            if three_branch:
                text = torch.cat([uncond_text, cond_text, cond_text])
                md = torch.cat([uncond_md, uncond_md, cond_md])
            else:
                text = torch.cat([uncond_text, cond_text])
                md = torch.cat([uncond_md, cond_md])
        text = text.repeat_interleave(num_images_per_prompt, dim=0)
        md = md.repeat_interleave(num_images_per_prompt, dim=0)
        batch = len(prompts) * num_images_per_prompt
        branches = text.shape[0] // batch

        # 3. Prepare timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 4. Prepare latents
        latents = self.prepare_latents(batch, height, width, text.dtype, device, generator, latents)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator)

        # 5. Denoising loop: one batched UNet call per step for all CFG branches
        unet_kwargs = {"metadata": md} if self.uses_metadata else {}
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * branches) if branches > 1 else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise = self.unet(model_input, t, encoder_hidden_states=text, return_dict=False, **unet_kwargs)[0]
                if do_cfg:
                    guided = combine_guidance(noise, guidance_scale, metadata_guidance_scale if three_branch else None)
                    if guidance_rescale > 0:
                        guided = rescale_guidance(guided, noise.chunk(branches)[-1], guidance_rescale)
                    noise = guided
                latents = self.scheduler.step(noise, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if callback is not None:
                    callback(i, int(t), latents)
                progress.update()

        # 6. Decode and post-process
        if output_type == "latent":
            images = latents
        else:
            decoded = self.decode_latents(latents)
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return DiffusionSatPipelineOutput(images=images)

    def prepare_extra_step_kwargs(self, generator) -> dict:
        """Pass ``generator`` to schedulers whose ``step`` takes one (ancestral/SDE samplers)."""
        params = inspect.signature(self.scheduler.step).parameters
        return {"generator": generator} if "generator" in params else {}


def _importable(library: str | None) -> bool:
    if not library:
        return False
    try:
        return importlib.util.find_spec(library) is not None
    except (ImportError, ValueError):
        return False


def load_custom_components(pipeline_class: type, layout, given: dict) -> dict:
    """Components diffusers would not load as they stand: the UNet of a run checkpoint, and
    ``model_index.json`` entries whose library is ``null`` or not importable (the original code
    wrote ``"unet": [null, "SatUNet"]``), loaded with our classes by class name."""
    from ..models import SatControlNet, SatControlNet3D

    ours = {"SatUNet": SatUNet, "SatControlNet": SatControlNet, "SatControlNet3D": SatControlNet3D}
    expected = set(inspect.signature(pipeline_class.__init__).parameters) - {"self"}
    dtype = {"torch_dtype": given["torch_dtype"]} if "torch_dtype" in given else {}
    loaded = {}
    if "unet" not in given and layout.unet != layout.root / "unet":  # a run checkpoint's UNet
        loaded["unet"] = SatUNet.from_pretrained(str(layout.unet), **dtype)
    for name, entry in layout.index.items():
        if name.startswith("_") or name in given or name in loaded or name not in expected or not isinstance(entry, list):
            continue
        library, class_name = (list(entry) + [None, None])[:2]
        if class_name is not None and not _importable(library):
            if name == "controlnet":
                from .pipeline_controlnet import load_controlnet

                loaded[name] = load_controlnet(layout.root / name, **dtype)
            elif class_name in ours:
                loaded[name] = ours[class_name].from_pretrained(str(layout.root / name), **dtype)
            else:
                raise ValueError(f"{layout.root}: model_index.json names {name}={entry!r}, a class diffusionsat "
                                 f"does not know (known: {', '.join(ours)})")
    return loaded
