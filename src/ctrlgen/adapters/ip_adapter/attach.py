"""Load IP-Adapters into a job's UNet with diffusers' ``load_ip_adapter``, and take them out exactly.

Shared by ``ip_adapter`` and ``instantid``. The UNet is the cached pipeline's own module (a
``from_pipe`` view shares it), so everything loading changes is recorded first and put back on
exit: the attention processors (the same objects, not fresh instances as ``unload_ip_adapter``
would make), ``encoder_hid_proj`` (in the same slot of the module), the
``encoder_hid_dim_type`` config flag, and the view's ``image_encoder`` / ``feature_extractor``.

diffusers loads all IP-Adapters of a pipeline in one call (its processors hold one
``to_k_ip``/``to_v_ip`` per adapter). When a second adapter plugin attaches in the same job,
it reloads the ones attached before together with its own: a per-UNet stack records them, and
each attach restores on exit the state it found (LIFO, as the engine's ExitStack exits).
Self-attention processors set by other adapters (reference-only) are kept.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrlgen.core.errors import JobError

_MISSING = object()
_STACKS: dict[int, list[IPUse]] = {}  # id(unet) -> the IP-Adapters loaded into it for the running job


@dataclass
class IPUse:
    """One IP-Adapter in one job: its weights, its image-embedding input, how strongly it acts.

    ``embeds`` is its ``ip_adapter_image_embeds`` entry (negative rows first when guided);
    ``layer_scales`` maps processor-name prefixes to factors (None: every layer, factor 1);
    ``mask`` is a ``1×images×H×W`` attention mask or None; ``prepare`` is called with the loaded
    image projection (FaceID-Plus sets its CLIP features there).
    """

    label: str
    state_dict: dict[str, dict[str, Any]]
    embeds: Any
    scale: float = 1.0
    layer_scales: dict[str, float] | None = None
    mask: Any = None
    prepare: Callable[[Any], None] | None = None
    # The weights file's identity (``file_signature``): uses with one let the engine keep what the
    # loader built for them (None: loaded every job).
    source: Any = None

    def scale_for(self, processor_name: str) -> float:
        if self.layer_scales is None:
            return self.scale
        matches = [prefix for prefix in self.layer_scales if _under(processor_name, prefix)]
        return self.scale * self.layer_scales[max(matches, key=len)] if matches else 0.0


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def read_ip_adapter_cached(engine: Any, path: Path, allow_pickle: bool, device: str) -> dict[str, dict[str, Any]]:
    """:func:`read_ip_adapter`, kept by ``engine`` per file (path, mtime, size) across jobs."""
    return engine.load_file(path, f"ip_adapter:{device}:{allow_pickle}",
                            lambda: read_ip_adapter(path, allow_pickle, device))


def read_ip_adapter(path: Path, allow_pickle: bool, device: str) -> dict[str, dict[str, Any]]:
    """An IP-Adapter file as diffusers' nested ``{"image_proj": ..., "ip_adapter": ...}`` dict.

    FaceID's LoRA tensors (``to_q_lora`` ...) are left out: diffusers would apply them with
    ``set_adapters``, switching off the job's other LoRAs. The FaceID LoRA is a normal LoRA
    (h94 ships it as ``ip-adapter-faceid_sd15_lora.safetensors``) for the ``lora`` adapter.
    """
    from ctrlgen.core.models.identify import load_state_dict

    flat = load_state_dict(path, allow_pickle=allow_pickle, device=device)
    nested: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in flat.items():
        group, _, name = key.partition(".")
        if group in nested and "_lora." not in name:
            nested[group][name] = tensor
    if not nested["image_proj"] or not nested["ip_adapter"]:
        raise JobError(f"{path} is not an IP-Adapter: it has no image_proj.* and ip_adapter.* tensors")
    return nested


def projection_kind(state_dict: dict[str, dict[str, Any]]) -> str:
    """base, full, faceid, faceid_plus, plus or face_resampler (InstantID), as diffusers tells them."""
    proj = state_dict["image_proj"]
    if "proj.weight" in proj:
        return "base"
    if "proj.3.weight" in proj:
        return "full"
    if "perceiver_resampler.proj_in.weight" in proj:
        return "faceid_plus"
    if "norm.weight" in proj:
        return "faceid"
    if "proj_in.weight" in proj and "latents" in proj:
        return "face_resampler" if proj["proj_in.weight"].shape[1] == 512 else "plus"
    raise JobError("unknown IP-Adapter image projection (keys: " + ", ".join(sorted(proj)[:6]) + ", ...)")


def cross_attention_blocks(unet: Any) -> list[str]:
    """Prefixes (``down_blocks.2.attentions.1``, ``mid_block.attentions.0``) of the UNet's attention
    blocks that take cross-attention, in processor order."""
    blocks: list[str] = []
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            block = name.split(".transformer_blocks.")[0]
            if block not in blocks:
                blocks.append(block)
    return blocks


@dataclass
class _Snapshot:
    processors: dict[str, Any]
    hid_proj: Any
    hid_proj_in_modules: bool
    hid_type: Any
    view_modules: dict[str, Any]

    @classmethod
    def take(cls, pipe: Any) -> _Snapshot:
        unet = pipe.unet
        return cls(
            dict(unet.attn_processors),
            unet.encoder_hid_proj,
            "encoder_hid_proj" in unet._modules,
            unet.config.__dict__.get("encoder_hid_dim_type", _MISSING),
            {name: getattr(pipe, name, None) for name in ("image_encoder", "feature_extractor")},
        )

    def restore(self, pipe: Any) -> None:
        unet = pipe.unet
        if self.hid_proj_in_modules:
            unet._modules["encoder_hid_proj"] = self.hid_proj
        else:
            unet._modules.pop("encoder_hid_proj", None)
            unet.__dict__["encoder_hid_proj"] = self.hid_proj
        if self.hid_type is _MISSING:
            unet.config.__dict__.pop("encoder_hid_dim_type", None)
        else:
            unet.config.__dict__["encoder_hid_dim_type"] = self.hid_type
        unet.set_attn_processor(self.processors)  # after encoder_hid_proj: the module tree must match
        for name, module in self.view_modules.items():
            if hasattr(pipe, name) and getattr(pipe, name) is not module:
                pipe.register_modules(**{name: module})


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    # load_ip_adapter warns that no image encoder was loaded; we pass embeddings, on purpose.
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def attach_ip_uses(context: Any, uses: list[IPUse]) -> Iterator[list[Any]]:
    """Load ``uses`` (after those already attached in this job) into ``context.pipeline``'s UNet;
    yields their loaded image projections; restores everything on exit."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    pipe = context.pipeline
    unet = pipe.unet
    stack = _STACKS.setdefault(id(unet), [])
    before = list(stack)
    entries = before + list(uses)
    snapshot = _Snapshot.take(pipe)
    saved_kwargs = {
        k: context.call_kwargs.get(k, _MISSING) for k in ("ip_adapter_image_embeds", "cross_attention_kwargs")
    }
    try:
        stack[:] = entries
        _load(context, pipe, entries)
        processors = {}
        for name, processor in unet.attn_processors.items():
            if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
                processor.scale = [entry.scale_for(name) for entry in entries]
            elif name in snapshot.processors and not name.startswith("encoder_hid_proj."):
                processor = snapshot.processors[name]  # keep other adapters' self-attention processors
            processors[name] = processor
        unet.set_attn_processor(processors)
        layers = list(unet.encoder_hid_proj.image_projection_layers)
        for entry, layer in zip(entries, layers, strict=True):
            if entry.prepare is not None:
                entry.prepare(layer)
        context.call_kwargs["ip_adapter_image_embeds"] = [entry.embeds for entry in entries]
        masks = [entry.mask for entry in entries]
        if any(mask is not None for mask in masks):
            extra = dict(context.call_kwargs.get("cross_attention_kwargs") or {})
            extra["ip_adapter_masks"] = masks
            context.call_kwargs["cross_attention_kwargs"] = extra
        yield layers[len(before) :]
    finally:
        stack[:] = before
        if not before:
            _STACKS.pop(id(unet), None)
        snapshot.restore(pipe)
        for key, value in saved_kwargs.items():
            if value is _MISSING:
                context.call_kwargs.pop(key, None)
            else:
                context.call_kwargs[key] = value


def _load(context: Any, pipe: Any, entries: list[IPUse]) -> None:
    """``entries`` into ``pipe``'s UNet with diffusers' loader — or, when this engine loaded the
    same files into the same UNet before, the IP processors and image projection it built then
    (the loader converts every tensor again and builds new modules each time). A file changed
    on disk (mtime, size) is loaded again."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    unet = pipe.unet
    engine = getattr(context, "engine", None)
    sources = tuple(entry.source for entry in entries)
    if engine is None or not hasattr(engine, "cached") or any(source is None for source in sources):
        _run_loader(pipe, entries)
        return

    def build() -> tuple[Any, dict[str, Any], Any]:
        _run_loader(pipe, entries)
        built = {name: processor for name, processor in unet.attn_processors.items()
                 if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0))}
        return unet, built, unet.encoder_hid_proj  # (the UNet: kept alive, so its id stays its own)

    key = ("ip_adapter:loaded", id(unet), tuple(source[0] for source in sources))
    _, built, projection = engine.cached(key, sources, build)
    if unet.encoder_hid_proj is projection:
        return  # built just now
    unet.encoder_hid_proj = projection
    unet.config.__dict__["encoder_hid_dim_type"] = "ip_image_proj"
    current = unet.attn_processors  # (with the projection's own attention layers)
    unet.set_attn_processor({name: built.get(name, processor) for name, processor in current.items()})


def _run_loader(pipe: Any, entries: list[IPUse]) -> None:
    with _quiet("diffusers.loaders.ip_adapter"):
        pipe.load_ip_adapter(
            [e.state_dict for e in entries],
            subfolder="",
            weight_name=[""] * len(entries),
            image_encoder_folder=None,
        )


def guided(context: Any) -> bool:
    """Whether the pipeline will run classifier-free guidance (negative rows first in embeds)."""
    return context.job.cfg_scale > 1 and context.pipeline.unet.config.time_cond_proj_dim is None


def cfg_layout(context: Any, positive: Any, negative: Any) -> Any:
    """``ip_adapter_image_embeds`` entry: one row per image of the batch, negatives first when guided."""
    import torch

    batch = context.job.batch_size
    rows = (
        [negative[None]] * batch + [positive[None]] * batch if guided(context) else [positive[None]] * batch
    )
    return torch.cat(rows).to(device=context.device, dtype=context.pipeline.unet.dtype)
