"""Reference-only on diffusers primitives, with sd-webui-controlnet's semantics (its ``hook.py``).

At every UNet call the reference image's latent is noised to the call's timestep
(``q_sample``: ``sqrt(a_t) x0 + sqrt(1 - a_t) eps``) and run through the UNet once per reference
use in a *write* pass, with the call's conditioning but without ControlNet residuals. In that
pass the self-attention layers store their input (the normed hidden states, A1111's ``x_norm1``)
and the AdaIN points store per-channel mean and variance. The real call is then the *read*
pass: self-attention attends over its own tokens plus the stored reference tokens, and AdaIN
points renormalise their output to the stored statistics. ``style_fidelity`` blends, for the
unconditional (negative-prompt) rows only, the plain result back in:
``out = fidelity * out_plain_uncond + (1 - fidelity) * out_reference``.

``weight`` selects the layers that take part (see :mod:`ctrlgen.adapters.reference.layers`).

Everything installed is removed on :meth:`ReferenceHooks.remove`: the UNet hooks and AdaIN
hooks by handle, the attention processors by putting the very objects found back.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from ctrlgen.adapters.reference.layers import (
    Bank,
    ReferenceAttnProcessor,
    ReferenceState,
    adain_hook,
    adain_points,
    self_attention_layers,
)

# UNet inputs the reference pass leaves out: ControlNet / T2I-Adapter residuals belong to the
# generated image, not to the reference.
_RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual",
              "down_intrablock_additional_residuals")


@dataclass
class ReferenceUse:
    """One reference image with its mode, weight, fidelity and active fraction of the steps."""

    image: Any  # RGB uint8 H×W×3
    attention: bool
    adain: bool
    weight: float
    style_fidelity: float
    guidance_start: float
    guidance_end: float
    resize_mode: str
    latents: dict[tuple[int, int], Any] = field(default_factory=dict)  # (h, w) -> x0 latent


class ReferenceHooks:
    """Installs reference-only on ``unet`` for ``uses``; ``context`` gives the running pipeline
    (scheduler, VAE, guidance) at call time. Call :meth:`remove` to take everything out."""

    def __init__(self, context: Any, unet: Any, uses: list[ReferenceUse], seed: int) -> None:
        import torch

        self.context, self.unet, self.uses = context, unet, uses
        self.state = ReferenceState()
        self.generator = torch.Generator().manual_seed(seed)
        self.processors: dict[Any, ReferenceAttnProcessor] = {}
        layers = self_attention_layers(unet) if any(use.attention for use in uses) else []
        self.layers = [(attn, index / len(layers)) for index, attn in enumerate(layers)]
        self.handles = [unet.register_forward_pre_hook(self._before_unet, with_kwargs=True),
                        unet.register_forward_hook(self._after_unet, with_kwargs=True)]
        self.adain_banks: list[Bank] = []
        if any(use.adain for use in uses):
            for module, threshold in adain_points(unet):
                bank = Bank(threshold)
                self.adain_banks.append(bank)
                self.handles.append(module.register_forward_hook(adain_hook(self.state, bank)))
        self.signature = inspect.signature(type(unet).forward)

    def on_step_end(self, pipe, step, timestep, tensors):
        self.state.step = step + 1
        self.state.total = max(1, int(getattr(pipe, "num_timesteps", 0) or 1))
        return None

    def _install_processors(self) -> None:
        # Done at UNet calls, after every adapter of the job attached, so a processor another
        # adapter set on a self-attention layer is wrapped, not replaced (and re-wrapped if replaced).
        for attn, threshold in self.layers:
            wrapper = self.processors.get(attn)
            if wrapper is None or attn.processor is not wrapper:
                wrapper = ReferenceAttnProcessor(attn.processor, self.state, threshold)
                attn.set_processor(wrapper)
                self.processors[attn] = wrapper

    def remove(self) -> None:
        self._clear()
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for attn, wrapper in self.processors.items():
            if attn.processor is wrapper:
                attn.set_processor(wrapper.inner)
        self.processors = {}

    def _clear(self) -> None:
        self.state.mode = "idle"
        for processor in self.processors.values():
            processor.bank.clear()
        for bank in self.adain_banks:
            bank.clear()

    def _after_unet(self, module, args, kwargs, output):
        if not self.state.in_reference_pass:
            self._clear()
        return None

    def _before_unet(self, module, args, kwargs):
        state = self.state
        if state.in_reference_pass:
            return None
        self._clear()
        progress = state.step / state.total
        active = [u for u in self.uses if u.weight > 0 and u.guidance_start <= progress <= u.guidance_end]
        if not active:
            return None
        self._install_processors()
        call = self.signature.bind(module, *args, **kwargs).arguments
        call.pop("self", None)
        extra = dict(call.pop("kwargs", {}) or {})
        sample, timestep = call.pop("sample"), call.pop("timestep")
        for name in _RESIDUALS:
            call.pop(name, None)
        call["return_dict"] = False
        state.in_reference_pass = True
        try:
            for use in active:
                state.mode = "write"
                state.attention_weight = use.weight if use.attention else None
                state.adain_weight = use.weight if use.adain else None
                state.style_fidelity = use.style_fidelity
                module(self._reference_sample(use, sample, timestep), timestep, **call, **extra)
        finally:
            state.in_reference_pass = False
        state.mode = "read"
        guided = bool(getattr(self.context.pipeline, "do_classifier_free_guidance", False))
        rows = sample.shape[0]
        state.uncond_rows = list(range(rows // 2)) if guided and rows % 2 == 0 else []
        return None

    def _reference_sample(self, use: ReferenceUse, sample: Any, timestep: Any) -> Any:
        """The reference latent noised to ``timestep``, shaped like the UNet's input."""
        import torch

        rows, channels, height, width = sample.shape
        x0 = self._latent(use, height, width, sample.device).to(sample.dtype)
        alphas = self.context.pipeline.scheduler.alphas_cumprod
        t = torch.as_tensor(timestep).flatten().float().round().long().clamp(0, len(alphas) - 1)
        a = alphas.to(sample.device)[t.to(sample.device)].to(sample.dtype).reshape(-1, 1, 1, 1)
        noise = torch.randn((rows, x0.shape[1], height, width), generator=self.generator)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise.to(sample.device, sample.dtype)
        if channels == x0.shape[1] + 5:  # inpainting UNet: nothing masked, the reference as the image
            mask = torch.zeros((rows, 1, height, width), device=sample.device, dtype=sample.dtype)
            noisy = torch.cat([noisy, mask, x0.expand(rows, -1, -1, -1)], dim=1)
        return noisy

    def _latent(self, use: ReferenceUse, height: int, width: int, device: Any) -> Any:
        if (height, width) not in use.latents:
            use.latents[(height, width)] = encode_reference(self.context.pipeline, use, height, width, device)
        return use.latents[(height, width)]


def encode_reference(pipe: Any, use: ReferenceUse, height: int, width: int, device: Any) -> Any:
    """The reference image fitted to the latent size (``resize_mode``) and VAE-encoded (the mean)."""
    import copy

    import numpy as np
    import torch

    from ctrlgen.core.images import fit

    scale = getattr(pipe, "vae_scale_factor", 8)
    pixels = fit(use.image, width * scale, height * scale, use.resize_mode)
    vae = pipe.vae
    tensor = torch.tensor(np.asarray(pixels)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    tensor = tensor.to(device=device, dtype=vae.dtype)
    latent = vae.encode(tensor).latent_dist.mean
    if not torch.isfinite(latent).all() and vae.dtype != torch.float32:
        # fp16 SDXL VAEs overflow (diffusers' force_upcast); encode with a float32 copy instead.
        latent = copy.deepcopy(vae).float().encode(tensor.float()).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latent.float() - shift) * vae.config.scaling_factor
