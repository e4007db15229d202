"""Conditional generation with a ControlNet (SPEC §3): super-resolution, temporal, in-painting, control.

:class:`DiffusionSatControlNetPipeline` is :class:`DiffusionSatPipeline` plus a ``controlnet``:

* a :class:`SatControlNet` (2D) takes one conditioning image ``(B, C, H, W)`` and its metadata —
  image control (roads, masks, edges), in-painting (image with the hole blanked + the mask), and
  super-resolution (low-res multispectral bands). Given ``(B, C, K, H, W)`` — K low-res images of
  one place — it makes one estimate per image and fuses them at every step (multi-image SR);
* a :class:`SatControlNet3D` takes T dated frames ``(B, C, T, H, W)`` with per-frame metadata and
  predicts the image at the target metadata (temporal generation). Frames are sorted by date first.

Large samples are denoised tile by tile with blended overlaps (:func:`sampling.tiled`). Classifier-free
guidance: the unconditional branch gets the empty prompt and all-"unknown" target *and*
conditioning metadata; the control image itself is not zeroed (as the original).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..metadata import MetadataLike, SatMetadata, as_metadata, metadata_tensor
from ..models.controlnet import SatControlNet
from ..models.controlnet_3d import SatControlNet3D
from ..models.sat_unet import SatUNet
from . import sampling
from .pipeline_diffusionsat import (
    DiffusionSatPipeline,
    DiffusionSatPipelineOutput,
    MetadataInput,
    combine_guidance,
)

logger = logging.getLogger(__name__)

CONTROLNET_SUBFOLDER = "controlnet"


# --- the ControlNet-conditioned noise prediction: one function for training and sampling ------------
def controlnet_noise_pred(
    unet: SatUNet,
    controlnet: SatControlNet | SatControlNet3D,
    sample: torch.Tensor,
    timestep: torch.Tensor | int,
    encoder_hidden_states: torch.Tensor,
    control: torch.Tensor,
    metadata: torch.Tensor | None = None,
    cond_metadata: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """UNet prediction with the ControlNet's residuals added (what a task trainer regresses).

    ``metadata`` (B, 7) is the target's, ``cond_metadata`` (B, 7) / (B, T, 7) the conditioning
    image(s)', both normalised. Gradients flow into the ControlNet; freeze the UNet yourself.
    """
    down, mid = controlnet(
        sample, timestep, encoder_hidden_states, control, conditioning_scale,
        metadata=metadata, cond_metadata=cond_metadata, return_dict=False,
    )
    unet_kwargs = {"metadata": metadata} if getattr(unet.config, "use_metadata", False) else {}
    return unet(
        sample, timestep, encoder_hidden_states, down_block_additional_residuals=down,
        mid_block_additional_residual=mid, return_dict=False, **unet_kwargs,
    )[0]


# --- inputs ------------------------------------------------------------------------------------------
def date_key(md: SatMetadata) -> tuple[int, int, int] | None:
    """Sort key of a frame's date; month/day unknown sort first within their year."""
    if md.year is None:
        return None
    return (md.year, md.month or 0, md.day or 0)


def sort_frames_by_date(metadata: Sequence[MetadataLike]) -> list[int]:
    """Indices that order frames by acquisition date (stable for equal dates).

    All frames must have a date, or none (then the given order is kept).
    """
    items = [as_metadata(m) for m in metadata]
    keys = [date_key(m) for m in items]
    if all(k is None for k in keys):
        return list(range(len(items)))
    missing = [i for i, k in enumerate(keys) if k is None]
    if missing:
        raise ValueError(f"frame {missing[0] + 1} has no date; give a date for every frame (or for none)")
    return sorted(range(len(items)), key=lambda i: (keys[i], items[i].normalize()))


def as_tensor_image(image: Any) -> torch.Tensor:
    """A float tensor from a tensor, a numpy array (same layout) or a PIL image (→ (1, C, H, W) in [0, 1])."""
    if isinstance(image, PIL.Image.Image):
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr).permute(2, 0, 1)[None]
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image)).float()
    if torch.is_tensor(image):
        return image.float()
    raise TypeError(f"expected a tensor, numpy array or PIL image, got {type(image).__name__}")


def resize_condition(image: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a (B, C, H, W) or (B, C, T, H, W) conditioning tensor to ``size`` (antialiased down)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if image.ndim == 5:
        b, c, t, h, w = image.shape
        flat = image.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        return resize_condition(flat, size, mode).reshape(b, t, c, *size).permute(0, 2, 1, 3, 4)
    if mode == "nearest":
        return F.interpolate(image, size=size, mode="nearest")
    down = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode=mode, align_corners=False, antialias=down)


def inpaint_condition(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The in-painting ControlNet's input: the image with the hole blanked, plus the mask (C + 1 bands)."""
    return torch.cat([image * (1 - mask), mask], dim=1)


class DiffusionSatControlNetPipeline(DiffusionSatPipeline):
    r"""Generate satellite images conditioned on images (+ their metadata) through a ControlNet.

    Args:
        vae, text_encoder, tokenizer, unet, scheduler: as :class:`DiffusionSatPipeline`.
        controlnet: a :class:`SatControlNet` or :class:`SatControlNet3D`.
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        vae: AutoencoderKL | None,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        unet: SatUNet,
        controlnet: SatControlNet | SatControlNet3D,
        scheduler: KarrasDiffusionSchedulers,
    ):
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_modules(controlnet=controlnet)
        both = getattr(controlnet.config, "use_metadata", False) and self.uses_metadata
        if both and float(controlnet.config.metadata_unknown_value) != self.metadata_unknown_value:
            raise ValueError(
                f"controlnet metadata_unknown_value={controlnet.config.metadata_unknown_value} differs from "
                f"the UNet's {self.metadata_unknown_value}"
            )

    # --- helpers ------------------------------------------------------------------------------------
    @property
    def is_3d(self) -> bool:
        return isinstance(self.controlnet, SatControlNet3D)

    @property
    def size_multiple(self) -> int:
        """Output height/width must be multiples of this."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def prepare_cond_metadata(
        self, cond_metadata: Any, batch: int, frames: int | None, device: torch.device
    ) -> torch.Tensor | None:
        """Normalise conditioning metadata to (B, 7), or (B, T, 7) for ``frames`` images.

        For frames: a list of T items (shared by the batch), a list of B lists of T, or a tensor.
        ``None`` stays ``None``: the ControlNet then leaves the conditioning-metadata term out, as the
        original does (not the embedding of all-"unknown" metadata).
        """
        unknown = self.metadata_unknown_value
        if cond_metadata is None:
            return None
        if frames is None:
            return self.prepare_metadata(cond_metadata, batch, device)
        if torch.is_tensor(cond_metadata):
            md = cond_metadata.to(device=device, dtype=torch.float32)
            md = md[None] if md.ndim == 2 else md
        else:
            rows = list(cond_metadata)
            nested = rows and isinstance(rows[0], (list, tuple))
            per_sample = rows if nested else [rows]
            md = torch.stack([metadata_tensor(r, unknown_value=unknown, device=device) for r in per_sample])
        if md.shape[0] == 1:
            md = md.expand(batch, -1, -1)
        if tuple(md.shape) != (batch, frames, 7):
            raise ValueError(f"conditioning metadata for {frames} images x {batch} samples expected, got {tuple(md.shape)}")
        return md

    def prepare_control(self, control: Any, batch: int, sample_size: tuple[int, int], device, dtype) -> torch.Tensor:
        """Control image(s) → (B, C, H, W) or (B, C, T, H, W) at the ControlNet's conditioning size."""
        image = as_tensor_image(control)
        if image.ndim == 3:
            image = image[None]
        if image.ndim not in (4, 5):
            raise ValueError(f"control image must be (B, C, H, W) or (B, C, T, H, W), got shape {tuple(image.shape)}")
        if self.is_3d and image.ndim == 4:
            image = image[:, :, None]
        expected = self.controlnet.config.conditioning_channels
        if image.shape[1] != expected:
            raise ValueError(
                f"control image has {image.shape[1]} bands/channels but this ControlNet was trained for {expected}"
            )
        if not torch.isfinite(image).all():
            raise ValueError("control image contains NaN or infinite values (mask nodata first)")
        if image.shape[0] == 1 and batch > 1:
            image = image.expand(batch, *image.shape[1:])
        if image.shape[0] != batch:
            raise ValueError(f"got {image.shape[0]} control images for {batch} prompts; give one or one per prompt")
        image = resize_condition(image, self.controlnet.conditioning_size(*sample_size))
        return image.to(device=device, dtype=dtype)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → model space (the VAE's scaled latent mean, or [-1, 1] pixels)."""
        scaled = image * 2 - 1
        if self.vae is None:
            return scaled
        latent = self.vae.encode(scaled.to(self.vae.dtype)).latent_dist.mean
        return latent * self.vae.config.scaling_factor

    def make_denoiser(
        self,
        text: torch.Tensor,
        metadata: torch.Tensor,
        control: torch.Tensor,
        cond_metadata: torch.Tensor | None,
        branches: int,
        guidance_scale: float,
        metadata_guidance_scale: float | None,
        conditioning_scale: float,
    ) -> sampling.Denoiser:
        """The CFG denoiser for one control input; it crops the control to the tile windows it is given.

        ``text``/``metadata``/``cond_metadata`` hold all CFG branches, branch-major; ``control`` is
        per sample and shared by the branches.
        """
        factor = self.controlnet.config.conditioning_downsample_factor

        def run(x: torch.Tensor, t: torch.Tensor, windows: list[sampling.Window] | None = None) -> torch.Tensor:
            tiles = 1 if windows is None else len(windows)
            if windows is None:
                ctrl = control
            else:
                ctrl = torch.cat([control[..., y0 * factor:y1 * factor, x0 * factor:x1 * factor] for y0, y1, x0, x1 in windows])
            model_input = torch.cat([x] * branches) if branches > 1 else x
            per_branch = lambda v: torch.cat([c.repeat(tiles, *[1] * (c.ndim - 1)) for c in v.chunk(branches)])  # noqa: E731
            noise = controlnet_noise_pred(
                self.unet, self.controlnet, model_input, t, per_branch(text), ctrl.repeat(branches, *[1] * (ctrl.ndim - 1)),
                metadata=per_branch(metadata), cond_metadata=None if cond_metadata is None else per_branch(cond_metadata),
                conditioning_scale=conditioning_scale,
            )
            if branches > 1:
                noise = combine_guidance(noise, guidance_scale, metadata_guidance_scale if branches == 3 else None)
            return noise

        return run

    # --- the algorithm ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        control_image: Any = None,
        metadata: MetadataInput = None,
        cond_metadata: Any = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        metadata_guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        controlnet_conditioning_scale: float = 1.0,
        image: Any = None,
        mask: Any = None,
        sort_frames: bool = True,
        fusion_weights: Sequence[float] | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        tile_batch: int = 16,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> DiffusionSatPipelineOutput | tuple:
        """Generate images from a control input.

        Args:
            prompt: text prompt(s).
            control_image: tensor/array in [0, 1]: (B, C, H, W); (B, C, T, H, W) = T dated frames for
                a 3D ControlNet, or K images fused during sampling for a 2D one (multi-image SR).
                ``None`` with ``image`` + ``mask`` builds the in-painting condition.
            metadata: target metadata (SatMetadata/dict, list per prompt, or normalised tensor).
            cond_metadata: metadata of the control image (one item), or of each frame (list of T).
            image, mask: in-painting: image in [0, 1] (B, C, H, W) and mask (B, 1, H, W), 1 = fill.
                Unmasked pixels of the output equal ``image`` exactly.
            sort_frames: order frames (and their metadata) by date before the ControlNet sees them.
            fusion_weights: weights of the K estimates in multi-image SR (default: equal).
            tile_size, tile_overlap: denoise samples larger than ``tile_size`` (sample pixels,
                default: the UNet's native size) tile by tile with blended overlaps.
            guidance_scale: CFG over text + metadata; ``<= 1`` disables it.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
        """
        # 1. Check inputs and define call parameters
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type={output_type!r}: must be one of pil, np, pt, latent")
        inpaint = image is not None or mask is not None
        if inpaint:
            if image is None or mask is None:
                raise ValueError("in-painting needs both image and mask")
            image, mask = self.check_inpaint_inputs(image, mask)
            if control_image is None:
                control_image = inpaint_condition(image, mask)
        if control_image is None:
            raise ValueError("control_image is required")
        probe = as_tensor_image(control_image)
        ref = image if inpaint else None
        height = height or (ref.shape[-2] if ref is not None else probe.shape[-2] * self.vae_scale_factor // self.controlnet.config.conditioning_downsample_factor)
        width = width or (ref.shape[-1] if ref is not None else probe.shape[-1] * self.vae_scale_factor // self.controlnet.config.conditioning_downsample_factor)
        self.check_inputs(prompt, height, width, num_inference_steps, guidance_scale, num_images_per_prompt)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if inpaint:
            if image.shape[0] not in (1, len(prompts)):
                raise ValueError(f"got {image.shape[0]} images to in-paint for {len(prompts)} prompts")
            image = image.expand(len(prompts), -1, -1, -1)
            mask = mask.expand(len(prompts), -1, -1, -1)
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        three_branch = do_cfg and metadata_guidance_scale is not None and self.uses_metadata
        branches = 3 if three_branch else 2 if do_cfg else 1
        sample_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)

        # 2. Control input(s) and their metadata; frames sorted by date
        control = self.prepare_control(control_image, len(prompts), sample_size, device, self.controlnet.dtype)
        frames = control.shape[2] if control.ndim == 5 else None
        if frames is not None and (cond_metadata is None or isinstance(cond_metadata, (SatMetadata, dict))):
            cond_metadata = None if cond_metadata is None else [cond_metadata] * frames  # one item for every frame
        cond_md = self.prepare_cond_metadata(cond_metadata, len(prompts), frames, device)
        if frames is not None and sort_frames and not torch.is_tensor(cond_metadata) and cond_metadata is not None:
            control, cond_md = self.sort_by_date(control, cond_md, cond_metadata)

        # 3. Encode prompt and metadata for all CFG branches (uncond: '' + unknown target and cond md)
        cond_text = self.encode_prompt(prompts, device)
        target_md = self.prepare_metadata(metadata, len(prompts), device)
        unknown_md = torch.full_like(target_md, self.metadata_unknown_value)
        unknown_cond = None if cond_md is None else torch.full_like(cond_md, self.metadata_unknown_value)
        text, md, cmd = [cond_text], [target_md], [cond_md]
        if do_cfg:
            negatives = negative_prompt if negative_prompt is not None else ""
            negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
            if len(negatives) != len(prompts):
                raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
            uncond_text = self.encode_prompt(negatives, device)
            if three_branch:
                text, md, cmd = [uncond_text, cond_text, cond_text], [unknown_md, unknown_md, target_md], [unknown_cond, unknown_cond, cond_md]
            else:
                text, md, cmd = [uncond_text, cond_text], [unknown_md, target_md], [unknown_cond, cond_md]
        rep = num_images_per_prompt
        text = torch.cat([t.repeat_interleave(rep, dim=0) for t in text])
        md = torch.cat([m.repeat_interleave(rep, dim=0) for m in md])
        cmd = None if cond_md is None else torch.cat([c.repeat_interleave(rep, dim=0) for c in cmd])
        control = control.repeat_interleave(rep, dim=0)
        batch = len(prompts) * rep

        # 4. Denoiser(s): one per control input (K fused for multi-image SR with a 2D ControlNet), tiled
        if frames is not None and not self.is_3d:
            models = [
                self.make_denoiser(text, md, control[:, :, k], None if cmd is None else cmd[:, k], branches, guidance_scale,
                                   metadata_guidance_scale, controlnet_conditioning_scale)
                for k in range(frames)
            ]
            denoiser = sampling.fused(models, fusion_weights)
        else:
            denoiser = self.make_denoiser(text, md, control, cmd, branches, guidance_scale,
                                          metadata_guidance_scale, controlnet_conditioning_scale)
        native = self.unet.config.sample_size
        multiple = 2 ** (len(self.unet.config.block_out_channels) - 1)
        tile = tile_size or int(native[0] if isinstance(native, (list, tuple)) else native)
        if tile < multiple:
            raise ValueError(f"tile_size={tile}: must be at least {multiple} for this model")
        tile = tile // multiple * multiple  # the UNet needs tiles it can downsample
        overlap = tile // 4 if tile_overlap is None else tile_overlap
        if not 0 <= overlap < tile:
            raise ValueError(f"tile_overlap={overlap}: must be >= 0 and smaller than the tile ({tile})")
        if max(sample_size) > tile:
            denoiser = sampling.tiled(denoiser, tile, overlap, multiple, tile_batch)

        # 5. Timesteps and latents
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(batch, height, width, text.dtype, device, generator, latents)

        # 6. In-painting: keep the known region on the trajectory
        after_step = None
        if inpaint:
            after_step = self.inpaint_hook(image, mask, rep, timesteps, latents, generator, device)

        # 7. Denoising loop
        with self.progress_bar(total=len(timesteps)) as progress:
            latents = sampling.sample(self.scheduler, denoiser, latents, timesteps, generator, after_step, callback, progress)

        # 8. Decode, composite known pixels exactly, post-process
        if output_type == "latent":
            images = latents
        else:
            decoded = ((self.decode_latents(latents) / 2 + 0.5).clamp(0, 1)).float()
            if inpaint:
                original = image.repeat_interleave(rep, dim=0).to(decoded.device)
                keep_mask = mask.repeat_interleave(rep, dim=0).to(decoded.device)
                decoded = sampling.composite_pixels(decoded, original, keep_mask.expand_as(decoded) > 0.5)
            images = self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=[False] * batch)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return DiffusionSatPipelineOutput(images=images)

    # --- task helpers ---------------------------------------------------------------------------------
    def check_inpaint_inputs(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = as_tensor_image(image), as_tensor_image(mask)
        image = image[None] if image.ndim == 3 else image
        mask = mask[None] if mask.ndim == 3 else mask
        mask = mask[:, None] if mask.ndim == 3 else mask
        if image.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1:
            raise ValueError(f"in-painting needs image (B, C, H, W) and mask (B, 1, H, W); got {tuple(image.shape)} and {tuple(mask.shape)}")
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"mask is {tuple(mask.shape[-2:])} px but the image is {tuple(image.shape[-2:])} px")
        if mask.shape[0] not in (1, image.shape[0]):
            raise ValueError(f"got {mask.shape[0]} masks for {image.shape[0]} images")
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must contain only 0 (keep) and 1 (fill)")
        if image.shape[1] != self.unet.config.out_channels and self.vae is None:
            raise ValueError(f"image has {image.shape[1]} bands but the model generates {self.unet.config.out_channels}")
        return image, mask.expand(image.shape[0], -1, -1, -1)

    def inpaint_hook(self, image, mask, rep, timesteps, latents, generator, device):
        """``after_step`` that puts the known region, noised to the next timestep, back into the latents."""
        image = image.repeat_interleave(rep, dim=0).to(device=device, dtype=latents.dtype)
        known = self.encode_image(image)
        keep = 1 - mask.repeat_interleave(rep, dim=0).to(device=device, dtype=latents.dtype)
        if self.vae is not None:  # a latent is "known" only where every pixel it covers is known
            keep = -F.max_pool2d(-keep, self.vae_scale_factor)
        noise = randn_tensor(known.shape, generator=generator[0] if isinstance(generator, list) else generator,
                             device=known.device, dtype=known.dtype)

        def after_step(i: int, t: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
            nxt = timesteps[i + 1] if i + 1 < len(timesteps) else None
            return sampling.inpaint_known(lat, known, keep, noise, self.scheduler, nxt)

        return after_step

    @staticmethod
    def sort_by_date(control: torch.Tensor, cond_md: torch.Tensor, raw_metadata: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Reorder frames (dim 2) and their metadata (dim 1) by date, per sample."""
        rows = list(raw_metadata)
        per_sample = rows if rows and isinstance(rows[0], (list, tuple)) else [rows] * control.shape[0]
        orders = [sort_frames_by_date(r) for r in per_sample]
        control = torch.stack([control[b][:, order] for b, order in enumerate(orders)])
        cond_md = torch.stack([cond_md[b][order] for b, order in enumerate(orders)])
        return control, cond_md


# --- model folders: the base pipeline + a controlnet/ subfolder ------------------------------------------
#: ``_class_name`` of the original DiffusionSat ControlNets, converted when loaded.
ORIGINAL_CONTROLNETS = ("ControlNetModel", "ControlNetModel3D")


def controlnet_class(folder: str | os.PathLike) -> type[SatControlNet] | type[SatControlNet3D] | None:
    """Which ControlNet class a saved ``controlnet`` folder holds (from its config.json); ``None``
    for an original DiffusionSat ControlNet (converted on loading)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a ControlNet folder (no config.json)")
    name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    classes = {"SatControlNet": SatControlNet, "SatControlNet3D": SatControlNet3D}
    if name in ORIGINAL_CONTROLNETS:
        return None
    if name not in classes:
        raise ValueError(f"{str(folder)!r} holds a {name!r}; expected one of "
                         f"{', '.join([*classes, *ORIGINAL_CONTROLNETS])}")
    return classes[name]


def controlnet_folder(folder: str | os.PathLike) -> Path:
    """The ControlNet inside ``folder``: itself, its ``controlnet/``, or the latest
    ``checkpoint-<N>/controlnet`` of an original ControlNet run."""
    path = Path(folder)
    if (path / "config.json").is_file():
        return path
    if (path / CONTROLNET_SUBFOLDER / "config.json").is_file():
        return path / CONTROLNET_SUBFOLDER
    from ..loading import _CHECKPOINT_RE

    runs = sorted((int(m.group(1)), c) for c in path.glob("checkpoint-*")
                  if (m := _CHECKPOINT_RE.fullmatch(c.name)) and (c / CONTROLNET_SUBFOLDER / "config.json").is_file())
    return runs[-1][1] / CONTROLNET_SUBFOLDER if runs else path


def load_controlnet(folder: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> SatControlNet | SatControlNet3D:
    """Load a ControlNet folder of ours, or an original one (converted in memory, as ``convert-checkpoint``)."""
    folder = controlnet_folder(folder)
    cls = controlnet_class(folder)
    if cls is None:
        from ..conversion import convert_controlnet

        logger.info("converting the original ControlNet in %s", folder)
        net = convert_controlnet(folder)
        return net.to(torch_dtype) if torch_dtype is not None else net
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    return cls.from_pretrained(str(folder), **kwargs)


def find_controlnet_folder(model: str | os.PathLike, task: str | None = None) -> Path:
    """``model/controlnet_<task>/`` when it exists (one folder serving several tasks), else ``model/controlnet/``."""
    folder = Path(model)
    if task is not None and (folder / f"{CONTROLNET_SUBFOLDER}_{task}" / "config.json").is_file():
        return folder / f"{CONTROLNET_SUBFOLDER}_{task}"
    return folder / CONTROLNET_SUBFOLDER


def load_controlnet_pipeline(
    model: str | os.PathLike,
    controlnet: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    task: str | None = None,
) -> DiffusionSatControlNetPipeline:
    """Load a task model: the base model ``model`` (any layout :meth:`DiffusionSatPipeline.from_pretrained`
    takes) plus its ControlNet.

    The ControlNet is ``controlnet`` if given (a ControlNet folder, or a run folder with ``controlnet/``
    or ``checkpoint-<N>/controlnet``), else ``model/controlnet_<task>/``, else ``model/controlnet/``.
    Original DiffusionSat ControlNets are converted on loading.
    """
    from ..loading import local_model_folder, model_layout

    folder = local_model_folder(model)
    root = model_layout(folder).root
    cn_folder = controlnet_folder(controlnet) if controlnet is not None else find_controlnet_folder(root, task)
    if not (cn_folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no ControlNet in {str(cn_folder)!r}: a task model is the base model folder plus a 'controlnet/' "
            "subfolder (or pass --controlnet PATH)"
        )
    from ..validation import check_weights

    check_weights(folder)
    check_weights(cn_folder)
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    if cn_folder == root / CONTROLNET_SUBFOLDER and "controlnet" in model_layout(root).index:
        return DiffusionSatControlNetPipeline.from_pretrained(str(folder), **kwargs).to(device)
    net = load_controlnet(cn_folder, torch_dtype=dtype)
    base = DiffusionSatPipeline.from_pretrained(str(folder), **kwargs)
    components = {k: v for k, v in base.components.items() if k != "controlnet"}
    pipe = DiffusionSatControlNetPipeline(**components, controlnet=net)
    return pipe.to(device)


TASKS = ("superres", "temporal", "inpaint", "control")


def new_task_controlnet(
    unet: SatUNet,
    task: str,
    conditioning_channels: int | None = None,
    vae_scale_factor: int = 1,
    max_frames: int = 3,
    conditioning_bands: list[str] | None = None,
) -> SatControlNet | SatControlNet3D:
    """A fresh ControlNet for ``task``, initialised from ``unet`` (what ``train --task`` starts from).

    * ``superres``: 2D, conditions at the sample's (latent) size — the low-res bands are resized to it;
      ``conditioning_channels`` = the band count (10 Sentinel-2 bands in the original);
    * ``temporal``: 3D over up to ``max_frames`` frames of ``conditioning_channels`` (default 3) bands;
    * ``inpaint``: 2D, the image with the hole blanked + the mask: ``out_channels + 1`` bands;
    * ``control``: 2D, a road/mask/edge map (default 3 channels, 1-band maps are repeated).
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: choose one of {', '.join(TASKS)}")
    if task == "superres":
        if conditioning_channels is None:
            raise ValueError("superres needs conditioning_channels (the number of low-res bands)")
        return SatControlNet.from_unet(unet, conditioning_channels=conditioning_channels,
                                       conditioning_downsample_factor=1, conditioning_bands=conditioning_bands)
    if task == "temporal":
        return SatControlNet3D.from_unet(unet, conditioning_channels=conditioning_channels or 3, max_frames=max_frames,
                                         conditioning_downsample_factor=vae_scale_factor)
    default = unet.config.out_channels + 1 if task == "inpaint" else 3
    return SatControlNet.from_unet(unet, conditioning_channels=conditioning_channels or default,
                                   conditioning_downsample_factor=vae_scale_factor, conditioning_bands=conditioning_bands)


def build_task_pipeline(
    preset: str,
    captions: Sequence[str],
    task: str,
    conditioning_channels: int | None = None,
    max_frames: int = 3,
    seed: int = 0,
) -> DiffusionSatControlNetPipeline:
    """A randomly initialised task pipeline of a model preset (``"tiny"`` for tests and demos)."""
    from ..models.presets import build_pipeline

    base = build_pipeline(preset, captions, seed=seed)
    controlnet = new_task_controlnet(base.unet, task, conditioning_channels=conditioning_channels,
                                     vae_scale_factor=base.vae_scale_factor, max_frames=max_frames)
    return DiffusionSatControlNetPipeline(**base.components, controlnet=controlnet)
