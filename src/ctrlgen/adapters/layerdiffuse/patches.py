"""LayerDiffuse's SDXL UNet patches, applied to a diffusers UNet and taken out exactly.

The released SDXL files are ComfyUI/Forge patches on the original (LDM) UNet: each tensor is
named ``diffusion_model.<ldm key>::<kind>::<index>``.

- ``lora`` (``layer_xl_transparent_attn``): index 0 is the up matrix, 1 the down matrix, 2 an
  optional alpha. :func:`lora_state_dict` renames them to diffusers' PEFT format
  (``unet.<module>.lora_A/lora_B.weight``) so the pipeline's own ``load_lora_weights`` loads them.
- ``diff`` (``layer_xl_transparent_conv``, ``fg2ble``/``bg2ble``, ``fgble2bg``/``bgble2fg``):
  weight differences added at ``weight``. The blending files widen the first convolution from
  4 input channels to 8 or 12: the extra ones read condition latents (a layer, or a layer and
  the blend) that :class:`ConcatInput` puts next to the UNet's latent at every step.
  :class:`DiffPatch` keeps a CPU copy of every tensor it changes and copies it back on exit, so
  the cached UNet returns bit for bit.
"""

from __future__ import annotations

import re
from typing import Any

from ctrlgen.core.errors import JobError

_RESNET_NAMES = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
                 ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut"))
_FIXED = {"input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
          "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
          "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2"}


def _resnet(rest: str) -> str:
    for old, new in _RESNET_NAMES:
        if rest.startswith(old + ".") or rest == old:
            return new + rest[len(old):]
    return rest


def diffusers_key(ldm_key: str, layers_per_block: int = 2) -> str:
    """The diffusers UNet name of an original (LDM) UNet tensor name (``diffusion_model.`` or not)."""
    key = ldm_key.removeprefix("model.").removeprefix("diffusion_model.")
    for old, new in _FIXED.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    per = layers_per_block + 1
    if match := re.fullmatch(r"input_blocks\.(\d+)\.0\.op\.(.+)", key):
        return f"down_blocks.{(int(match[1]) - 1) // per}.downsamplers.0.conv.{match[2]}"
    if match := re.fullmatch(r"input_blocks\.(\d+)\.(0|1)\.(.+)", key):
        block, layer = divmod(int(match[1]) - 1, per)
        if match[2] == "0":
            return f"down_blocks.{block}.resnets.{layer}.{_resnet(match[3])}"
        return f"down_blocks.{block}.attentions.{layer}.{match[3]}"
    if match := re.fullmatch(r"middle_block\.(0|1|2)\.(.+)", key):
        if match[1] == "1":
            return f"mid_block.attentions.0.{match[2]}"
        return f"mid_block.resnets.{int(match[1]) // 2}.{_resnet(match[2])}"
    if match := re.fullmatch(r"output_blocks\.(\d+)\.(\d)\.(.+)", key):
        block, layer = divmod(int(match[1]), per)
        if match[2] == "0":
            return f"up_blocks.{block}.resnets.{layer}.{_resnet(match[3])}"
        if match[3].startswith("conv."):  # the upsampler: index 1 without attention, 2 with
            return f"up_blocks.{block}.upsamplers.0.{match[3]}"
        return f"up_blocks.{block}.attentions.{layer}.{match[3]}"
    raise ValueError(f"{ldm_key!r} is not a UNet tensor name ctrlgen knows")


def split_patches(state_dict: dict[str, Any], kind: str) -> dict[str, dict[int, Any]]:
    """``{ldm key: {index: tensor}}`` of the file's patches of ``kind`` (``lora`` or ``diff``)."""
    found: dict[str, dict[int, Any]] = {}
    for name, tensor in state_dict.items():
        key, _, rest = name.partition("::")
        patch_kind, _, index = rest.partition("::")
        if patch_kind == kind:
            found.setdefault(key, {})[int(index or 0)] = tensor
    return found


def lora_state_dict(state_dict: dict[str, Any], layers_per_block: int = 2) -> dict[str, Any]:
    """A ``::lora::`` patch file as a diffusers PEFT LoRA state dict for ``load_lora_weights``."""
    converted = {}
    for key, parts in split_patches(state_dict, "lora").items():
        if 0 not in parts or 1 not in parts:
            raise JobError(f"the LayerDiffuse patch for {key} lacks its up (0) or down (1) matrix")
        module = diffusers_key(key, layers_per_block).removesuffix(".weight")
        up, down = parts[0].float(), parts[1].float()
        alpha = parts.get(2)
        if alpha is not None:  # ComfyUI scales a LoRA patch by alpha / rank
            up = up * (float(alpha) / down.shape[0])
        converted[f"unet.{module}.lora_A.weight"] = down.contiguous()
        converted[f"unet.{module}.lora_B.weight"] = up.contiguous()
    return converted


class ConcatInput:
    """A first convolution that reads the UNet's latent with condition latents beside it."""

    def __new__(cls, conv: Any, condition: Any):
        import torch

        class _ConcatConv(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = conv
                self.condition = condition

            def forward(self, sample):
                extra = self.condition.to(device=sample.device, dtype=sample.dtype)
                extra = extra.expand(sample.shape[0], -1, -1, -1) if extra.shape[0] == 1 else \
                    extra.repeat(sample.shape[0] // extra.shape[0], 1, 1, 1)
                return self.conv(torch.cat([sample, extra], dim=1))

        return _ConcatConv()


class DiffPatch:
    """Weight differences on a UNet for one job (see the module doc); a context manager."""

    def __init__(self, unet: Any, state_dict: dict[str, Any], weight: float, condition: Any = None,
                 layers_per_block: int = 2) -> None:
        self.unet, self.weight, self.condition = unet, weight, condition
        self.diffs = {diffusers_key(key, layers_per_block): parts[0]
                      for key, parts in split_patches(state_dict, "diff").items()}
        self.saved: list[tuple[Any, Any]] = []
        self.conv_in = None

    def _parameter(self, parameters: dict[str, Any], name: str):
        if name in parameters:
            return parameters[name]
        module, _, leaf = name.rpartition(".")
        wrapped = f"{module}.base_layer.{leaf}"  # a module PEFT (another adapter's LoRA) wraps
        if wrapped in parameters:
            return parameters[wrapped]
        raise JobError(f"the LayerDiffuse patch changes {name}, which this UNet does not have; "
                       "the patch is for another model family")

    def __enter__(self) -> DiffPatch:
        import torch

        parameters = dict(self.unet.named_parameters())
        conv_in_weight = self.diffs.get("conv_in.weight")
        widened = conv_in_weight is not None and conv_in_weight.shape[1] != self.unet.conv_in.in_channels
        if widened and self.condition is None:
            raise JobError("this LayerDiffuse patch reads condition latents (a foreground or background); "
                           "give the mode's images")
        with torch.no_grad():
            for name, diff in self.diffs.items():
                if widened and name == "conv_in.weight":
                    continue
                target = self._parameter(parameters, name)
                if tuple(target.shape) != tuple(diff.shape):
                    raise JobError(f"the LayerDiffuse patch for {name} has shape {tuple(diff.shape)}, the UNet's "
                                   f"is {tuple(target.shape)}; the patch is for another model")
                self.saved.append((target, target.detach().to("cpu", copy=True)))
                target.add_(diff.to(device=target.device, dtype=target.dtype), alpha=self.weight)
            if widened:
                self._widen(conv_in_weight)
        return self

    def _widen(self, diff: Any) -> None:
        import torch

        old = self.unet.conv_in
        extra = diff.shape[1] - old.in_channels
        if self.condition.shape[1] != extra:
            raise JobError(f"this LayerDiffuse patch reads {extra} condition channels, the mode gives "
                           f"{self.condition.shape[1]}")
        conv = torch.nn.Conv2d(diff.shape[1], old.out_channels, old.kernel_size, old.stride, old.padding,
                               bias=old.bias is not None).to(device=old.weight.device, dtype=old.weight.dtype)
        conv.weight.zero_()
        conv.weight[:, : old.in_channels] = old.weight
        conv.weight.add_(diff.to(conv.weight), alpha=self.weight)
        if old.bias is not None:
            conv.bias.copy_(old.bias)  # a bias diff, if any, was added to the original already
        self.conv_in = old
        self.unet.conv_in = ConcatInput(conv, self.condition)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.conv_in is not None:
            self.unet.conv_in = self.conv_in
            self.conv_in = None
        with torch.no_grad():
            for target, original in reversed(self.saved):
                target.copy_(original)
        self.saved.clear()
