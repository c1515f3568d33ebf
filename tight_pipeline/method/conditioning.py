"""The conditions the UNet sees: text embeds, the image's own embeds (the *tight* condition), one UNet call.

Image embeddings are computed once per image (``embed_image``) and reused on every step of every phase:
inversion, reconstruction and editing. The adapter's *negative* image embeds go to the unconditional branch
of classifier-free guidance. Adapter scale 0 is the plain, text-only baseline: once an IP-Adapter is loaded
diffusers needs image embeds on every call, so "off" means scale 0, not dropped embeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextCondition:
    """Prompt embeds for a batch of prompts (one row per prompt)."""

    embeds: torch.Tensor  # (B, tokens, dim)
    pooled: torch.Tensor | None  # (B, dim) for SDXL, None for SD
    time_ids: torch.Tensor | None  # (B, 6) for SDXL, None for SD

    def slice(self, lo: int, hi: int) -> "TextCondition":
        """Rows ``lo:hi`` (a view, no copy)."""
        if lo == 0 and hi == self.embeds.shape[0]:
            return self
        return TextCondition(
            self.embeds[lo:hi],
            None if self.pooled is None else self.pooled[lo:hi],
            None if self.time_ids is None else self.time_ids[lo:hi],
        )

    @staticmethod
    def cat(conds: list["TextCondition"]) -> "TextCondition":
        """Rows of every condition, in order."""
        return TextCondition(
            torch.cat([c.embeds for c in conds]),
            None if conds[0].pooled is None else torch.cat([c.pooled for c in conds]),
            None if conds[0].time_ids is None else torch.cat([c.time_ids for c in conds]),
        )

    def rows(self, index: list[int]) -> "TextCondition":
        pick = torch.tensor(index, dtype=torch.long, device=self.embeds.device)
        return TextCondition(
            self.embeds[pick],
            None if self.pooled is None else self.pooled[pick],
            None if self.time_ids is None else self.time_ids[pick],
        )


@dataclass(frozen=True)
class ImageCondition:
    """The image's adapter embeds, positive and negative, each shaped (1, n, ...) as diffusers expects."""

    positive: torch.Tensor
    negative: torch.Tensor

    def rows(self, negative_mask: list[bool]) -> torch.Tensor:
        """Stack per-row embeds: the negative embeds where ``negative_mask`` is True."""
        return torch.cat([self.negative if neg else self.positive for neg in negative_mask], dim=0)


def has_adapter(pipe) -> bool:
    return getattr(pipe.unet, "encoder_hid_proj", None) is not None


@torch.no_grad()
def embed_text(pipe, prompts: list[str], height: int, width: int, zero_empty: bool = True) -> TextCondition:
    """Encode ``prompts`` with the pipeline's text encoder(s); no CFG duplication here.

    An empty (or all-blank) prompt is the model's empty prompt: zero embeddings where the model says so
    (``force_zeros_for_empty_prompt``, SDXL: what its pipeline does for an empty negative prompt), else the
    encoded empty string. ``zero_empty=False`` always encodes (the demo model's evaluation grid was measured so).
    """
    device = pipe.unet.device
    if hasattr(pipe, "text_encoder_2"):  # SDXL: two encoders, pooled embeds and size/crop time ids
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=[p if p.strip() else "" for p in prompts], device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        proj_dim = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=embeds.dtype, text_encoder_projection_dim=proj_dim
        )
        if zero_empty and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            blank = torch.tensor([not p.strip() for p in prompts], device=embeds.device)
            embeds = torch.where(blank[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(blank[:, None], torch.zeros_like(pooled), pooled)
        return TextCondition(embeds, pooled, time_ids.to(device).repeat(len(prompts), 1))
    embeds, _ = pipe.encode_prompt([p if p.strip() else "" for p in prompts], device, 1, False)
    return TextCondition(embeds, None, None)


@torch.no_grad()
def embed_image(pipe, image) -> ImageCondition | None:
    """The image's own adapter embeds (``None`` when the model has no adapter). Computed once per image."""
    if not has_adapter(pipe):
        return None
    embeds = pipe.prepare_ip_adapter_image_embeds(
        ip_adapter_image=image,
        ip_adapter_image_embeds=None,
        device=pipe.unet.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
    )[0]
    negative, positive = embeds.chunk(2)
    return ImageCondition(positive=positive, negative=negative)


def set_adapter_scale(pipe, scale: float) -> None:
    if has_adapter(pipe):
        pipe.set_ip_adapter_scale(float(scale))


@torch.no_grad()
def predict_noise(pipe, latents: torch.Tensor, t, text: TextCondition, image_embeds: torch.Tensor | None,
                  max_batch: int = 0) -> torch.Tensor:
    """UNet call(s): the model's raw output for ``latents`` at timestep ``t`` under the given conditions.

    ``image_embeds`` holds one row per latent row (already chosen positive/negative); the adapter scale is
    whatever ``set_adapter_scale`` last set. The network runs in its own dtype; ``latents`` are cast to it at the
    call and the output comes back as float32, so every update rule around it (DDIM, ReNoise fixed points,
    DDPM noise maps) keeps float32 arithmetic even when the UNet is bf16/fp16. Rows are split into UNet calls
    of at most ``max_batch`` rows (0 = all rows in one call).
    """
    n = latents.shape[0]
    step = n if max_batch <= 0 else max_batch
    outs = []
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        outs.append(_unet_call(pipe, latents[lo:hi], t, text.slice(lo, hi),
                               None if image_embeds is None else image_embeds[lo:hi]))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _unet_call(pipe, latents, t, text: TextCondition, image_embeds):
    unet = pipe.unet
    added: dict = {}
    if text.pooled is not None:
        added["text_embeds"] = text.pooled
        added["time_ids"] = text.time_ids
    if image_embeds is not None:
        added["image_embeds"] = [image_embeds]
    if not torch.is_tensor(t):  # a tensor, not a Python int: a compiled UNet would recompile for every timestep
        t = torch.tensor(t, dtype=torch.int64 if isinstance(t, int) else torch.float32, device=latents.device)
    out = unet(
        latents.to(unet.dtype),
        t,
        encoder_hidden_states=text.embeds,
        added_cond_kwargs=added or None,
        return_dict=False,
    )[0]
    if out.dtype == torch.float32 and getattr(unet, "_compiled_call_impl", None) is not None:
        # compiled with CUDA graphs (compile: reduce-overhead), the next call reuses this output's buffer: keep a copy
        # (a half-precision output is copied by the cast below anyway)
        return out.clone()
    return out.float()
