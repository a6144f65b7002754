"""Reading model files safely and saying what they are.

- :func:`read_safetensors_header` reads only the 8-byte length and the JSON header of a
  ``.safetensors`` file, never tensor data: a 7 GB checkpoint is identified in
  milliseconds.
- :func:`identify_tensors` says what a set of tensor names and shapes is (the rules live
  in :mod:`ctrlgen.core.models.base_rules` and :mod:`ctrlgen.core.models.addon_rules`).
- :func:`identify_file` identifies a ``.safetensors`` file, a diffusers/transformers
  folder, or (only when allowed) a pickle, by tensor names and structure — never by its
  file name.
- :func:`load_state_dict` loads tensors: safetensors directly; pickles
  (``.ckpt/.pt/.pth/.bin``) only when allowed and then only with
  ``torch.load(weights_only=True)``.

torch is imported only inside the functions that read pickles or load tensors.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctrlgen.core.errors import ModelFormatError, UnsafeModelError
from ctrlgen.core.models import addon_rules, upscaler_rules
from ctrlgen.core.models import base_rules as architecture_rules
from ctrlgen.core.models.base_rules import (
    ARCHITECTURES,
    KINDS,
    ModelIdentity,
    TensorKeys,
    metadata_architecture,
)

__all__ = [
    "ARCHITECTURES",
    "KINDS",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIXES",
    "ModelIdentity",
    "SafetensorsHeader",
    "identify_file",
    "identify_folder",
    "identify_tensors",
    "load_state_dict",
    "read_pickle_tensors",
    "read_safetensors_header",
]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}


# torch dtype names -> safetensors names, so details["dtype"] reads the same for any container
_SAFETENSORS_DTYPES = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float64": "F64",
    "torch.int64": "I64",
    "torch.int32": "I32",
    "torch.int16": "I16",
    "torch.int8": "I8",
    "torch.uint8": "U8",
    "torch.bool": "BOOL",
    "torch.float8_e4m3fn": "F8_E4M3",
    "torch.float8_e5m2": "F8_E5M2",
}


@dataclass(frozen=True)
class SafetensorsHeader:
    """The header of a safetensors file: ``tensors`` maps name -> (dtype, shape)."""

    path: Path
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str]
    header_bytes: int
    file_bytes: int

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, (_, shape) in self.tensors.items()}

    def dtypes(self) -> dict[str, str]:
        return {name: dtype for name, (dtype, _) in self.tensors.items()}


def _corrupt(path: Path, reason: str) -> ModelFormatError:
    return ModelFormatError(
        f"{path} is not a usable safetensors file: {reason}. The file is truncated or corrupt "
        "(often an interrupted download); delete it and download it again."
    )


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read the tensor names, dtypes, shapes and ``__metadata__`` of a safetensors file.

    Only the header is read. Raises :class:`ModelFormatError` naming the file when it is
    too short, announces an absurd header, holds invalid JSON or points past its end.
    """
    path = Path(path)
    try:
        file_bytes = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, f"it is only {file_bytes} bytes long")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise _corrupt(path, f"its header claims {header_len} bytes (more than 100 MB)")
            if 8 + header_len > file_bytes:
                raise _corrupt(path, f"its header claims {header_len} bytes but the file has {file_bytes}")
            raw = handle.read(header_len)
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _corrupt(path, "its __metadata__ is not a JSON object")
    data_bytes = file_bytes - 8 - header_len
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in header.items():
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"the entry for tensor {name!r} is malformed") from None
        if not 0 <= begin <= end or end > data_bytes:
            raise _corrupt(
                path, f"tensor {name!r} lies at bytes {begin}-{end} but the data region has only {data_bytes}"
            )
        bits = _DTYPE_BITS.get(dtype)
        if bits is not None and math.prod(shape) * bits != (end - begin) * 8:
            raise _corrupt(
                path, f"tensor {name!r} has {end - begin} bytes for a {dtype} of shape {list(shape)}"
            )
        tensors[name] = (dtype, shape)
    return SafetensorsHeader(
        path, tensors, {str(k): str(v) for k, v in metadata.items()}, header_len, file_bytes
    )


# -- identification from names and shapes ----------------------------------------------

# Most specific first: an IP-Adapter holds LoRA-like keys, a ControlNet holds UNet keys.
_RULES = (
    addon_rules.layerdiffuse_rule,  # first: its decoder holds UNet-like down_blocks keys
    addon_rules.ip_adapter_rule,
    architecture_rules.controlnet_rule,
    addon_rules.lora_rule,
    architecture_rules.diffusion_model_rule,
    architecture_rules.vae_rule,
    addon_rules.embedding_rule,
    addon_rules.clip_vision_rule,
    addon_rules.text_encoder_rule,
    upscaler_rules.upscaler_rule,  # ESRGAN & co. (last: nothing a diffusion model holds matches)
)


def _summary(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str] | None) -> dict[str, Any]:
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    details: dict[str, Any] = {"tensors": len(shapes), "parameters": sum(sizes.values())}
    if dtypes:
        by_dtype: Counter[str] = Counter()
        for name, dtype in dtypes.items():
            by_dtype[dtype] += sizes.get(name, 0)
        if by_dtype:
            details["dtype"] = by_dtype.most_common(1)[0][0]
    return details


def identify_tensors(
    shapes: Mapping[str, tuple[int, ...]],
    metadata: Mapping[str, str] | None = None,
    *,
    dtypes: Mapping[str, str] | None = None,
) -> ModelIdentity:
    """Identify a model from its tensor names and shapes (and safetensors metadata).

    ``metadata`` is only a tie-breaker: it can name the architecture when the structure
    cannot (an SD1.5 and an SDXL VAE are identical) and say a model is v-prediction.
    Details always include ``tensors``, ``parameters`` and (given ``dtypes``) ``dtype``.
    """
    keys = TensorKeys(shapes)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    identity = next((found for rule in _RULES if (found := rule(keys, meta)) is not None), ModelIdentity())
    details = {**_summary(keys.shapes, dtypes), **identity.details}
    architecture = identity.architecture
    if architecture == "unknown" and identity.kind != "unknown":
        hinted = metadata_architecture(meta)
        if hinted:
            architecture = hinted
            details["architecture_source"] = "metadata"
    return ModelIdentity(identity.kind, architecture, identity.variant, details, identity.format)


# -- pickles --------------------------------------------------------------------


def _pickle_refused(path: Path) -> UnsafeModelError:
    return UnsafeModelError(
        f"{path} is a pickle, which can run arbitrary code when loaded; convert it to .safetensors, "
        "or allow pickles with CTRLGEN_ALLOW_PICKLE=1 / allow_pickle = true in config.toml; "
        "even then it is loaded with torch.load(weights_only=True)."
    )


def _torch_load(path: Path, map_location: Any) -> Any:
    import torch

    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Files in the legacy (pre-zip) format cannot be memory-mapped.
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only" in text.lower() or "weights_only" in text:
            reason = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), "")
            raise UnsafeModelError(
                f"{path} contains Python objects other than tensors, so torch.load(weights_only=True) "
                f"refused to load it{f' ({reason})' if reason else ''}. Such a file can run code when "
                "loaded; ctrlgen never loads it. Get a .safetensors version of the model instead."
            ) from None
        raise ModelFormatError(f"{path} is not a readable pickle ({exc}); it may be corrupt") from None
    except (EOFError, OSError, RuntimeError, ValueError) as exc:
        raise ModelFormatError(
            f"{path} could not be read as a PyTorch file ({type(exc).__name__}: {exc}); "
            "it may be truncated or corrupt: download it again."
        ) from None


def _flatten(obj: Any, prefix: str, out: dict[str, Any], extra: dict[str, str]) -> None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            _flatten(value, f"{prefix}{key}.", out, extra)
    elif hasattr(obj, "shape") and hasattr(obj, "dtype"):
        out[prefix[:-1]] = obj
    elif isinstance(obj, (str, int, float, bool)) and prefix:
        extra[prefix[:-1]] = str(obj)


def _unwrap(obj: Any) -> Any:
    # LDM .ckpt files keep the weights under "state_dict" next to training state.
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"]
    return obj


def read_pickle_tensors(path: str | os.PathLike[str], allow_pickle: bool = False) -> tuple[dict, dict]:
    """Names -> meta tensors of a pickled checkpoint, plus its plain-value entries.

    Nested dicts are flattened with dots (``image_proj.proj.weight``). Refused with
    :class:`UnsafeModelError` unless ``allow_pickle``; loads with ``weights_only=True``.
    """
    path = Path(path)
    if not allow_pickle:
        raise _pickle_refused(path)
    tensors: dict[str, Any] = {}
    extra: dict[str, str] = {}
    _flatten(_unwrap(_torch_load(path, "meta")), "", tensors, extra)
    return tensors, extra


# -- identification ------------------------------------------------------------------


def identify_file(path: str | os.PathLike[str], allow_pickle: bool = False) -> ModelIdentity:
    """Identify a model file or folder by its contents.

    ``.safetensors`` files by their header; folders by ``model_index.json`` or
    ``config.json``; pickles only when ``allow_pickle`` (else :class:`UnsafeModelError`).
    Other files (``.onnx``, ``.gguf``, ...) are ``unknown``.
    """
    path = Path(path)
    if path.is_dir():
        return identify_folder(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        header = read_safetensors_header(path)
        identity = identify_tensors(header.shapes(), header.metadata, dtypes=header.dtypes())
        return _with(identity, container="safetensors")
    if suffix in PICKLE_SUFFIXES:
        tensors, extra = read_pickle_tensors(path, allow_pickle)
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        dtypes = {name: _SAFETENSORS_DTYPES.get(str(t.dtype), str(t.dtype)) for name, t in tensors.items()}
        identity = identify_tensors(shapes, extra, dtypes=dtypes)
        return _with(identity, container="pickle")
    if not path.exists():
        raise ModelFormatError(f"{path} does not exist")
    return ModelIdentity(details={"container": suffix.lstrip(".") or "file"})


def _with(identity: ModelIdentity, **details: Any) -> ModelIdentity:
    return ModelIdentity(
        identity.kind,
        identity.architecture,
        identity.variant,
        {**identity.details, **details},
        identity.format,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc}); download the model folder again") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} does not hold a JSON object; download the model folder again")
    return data


def _optional_json(path: Path) -> dict[str, Any]:
    return _read_json(path) if path.is_file() else {}


def identify_folder(path: str | os.PathLike[str]) -> ModelIdentity:
    """Identify a diffusers pipeline folder (``model_index.json``) or a component folder
    (``config.json`` with diffusers' ``_class_name`` or transformers' ``architectures``)."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return _identify_pipeline(path)
    if (path / "config.json").is_file():
        return _identify_component(_read_json(path / "config.json"))
    return ModelIdentity(details={"container": "folder"})


def _unet_config_architecture(config: Mapping[str, Any]) -> str:
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if config.get("use_linear_projection"):
        return "sd2"
    return "sd15" if config else "unknown"


def _config_variant(config: Mapping[str, Any], architecture: str) -> str:
    in_ch = config.get("in_channels")
    # diffusers' defaults when a config leaves it out: UNets predict 4 channels, FLUX/SD3 as many as go in.
    out_ch = config.get("out_channels") or (in_ch if architecture in ("flux", "sd3") else 4)
    if isinstance(in_ch, int) and isinstance(out_ch, int):
        if architecture == "flux":
            return {6: "inpaint", 2: "control"}.get(in_ch // out_ch if in_ch % out_ch == 0 else 0, "")
        if in_ch == 2 * out_ch + 1:
            return "inpaint"
        if in_ch == 2 * out_ch:
            return "instruct_pix2pix"
    if architecture == "sdxl" and len(config.get("down_block_types") or ()) == 4:
        return "refiner"
    return ""


def _identify_pipeline(path: Path) -> ModelIdentity:
    index = _read_json(path / "model_index.json")
    pipeline = str(index.get("_class_name", ""))
    unet = _optional_json(path / "unet" / "config.json")
    transformer = _optional_json(path / "transformer" / "config.json")
    text = _optional_json(path / "text_encoder" / "config.json")
    if pipeline.startswith("Flux"):
        architecture = "flux"
    elif pipeline.startswith("StableDiffusion3"):
        architecture = "sd3"
    elif pipeline.startswith("StableDiffusionXL"):
        architecture = "sdxl"
    elif pipeline.startswith("StableDiffusion"):
        # SD2's OpenCLIP text encoder uses gelu; SD1's CLIP ViT-L uses quick_gelu.
        if unet:
            architecture = _unet_config_architecture(unet)
        else:
            architecture = "sd2" if text.get("hidden_act") == "gelu" else "sd15"
    else:
        architecture = "unknown"
    variant = _config_variant(unet or transformer, architecture)
    if architecture == "sdxl" and not variant and index.get("requires_aesthetics_score"):
        variant = "refiner"
    scheduler = _optional_json(path / "scheduler" / "scheduler_config.json")
    details: dict[str, Any] = {
        "container": "folder",
        "pipeline_class": pipeline,
        "components": sorted(
            k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]
        ),
    }
    if scheduler.get("prediction_type") == "v_prediction":
        details["prediction_type"] = "v_prediction"
        variant = variant or "v_prediction"
    for key in ("cross_attention_dim", "in_channels"):
        if key in unet:
            details[key] = unet[key]
    return ModelIdentity("checkpoint", architecture, variant, details, "diffusers")


_VISION_CLASSES = ("CLIPVisionModelWithProjection", "CLIPVisionModel")
_TEXT_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel")


def _identify_component(config: Mapping[str, Any]) -> ModelIdentity:
    name = str(config.get("_class_name") or (config.get("architectures") or [""])[0])
    details: dict[str, Any] = {"container": "folder", "class_name": name}
    for key in ("cross_attention_dim", "in_channels", "latent_channels", "hidden_size"):
        if key in config:
            details[key] = config[key]
    if name in ("ControlNetModel", "ControlNetUnionModel"):
        variant = "union" if name == "ControlNetUnionModel" else ""
        return ModelIdentity("controlnet", _unet_config_architecture(config), variant, details, "diffusers")
    if name in ("SD3ControlNetModel", "FluxControlNetModel"):
        return ModelIdentity(
            "controlnet", "sd3" if name.startswith("SD3") else "flux", "", details, "diffusers"
        )
    if name == "UNet2DConditionModel":
        architecture = _unet_config_architecture(config)
        return ModelIdentity(
            "unet", architecture, _config_variant(config, architecture), details, "diffusers"
        )
    if name in ("SD3Transformer2DModel", "FluxTransformer2DModel"):
        architecture = "sd3" if name.startswith("SD3") else "flux"
        return ModelIdentity(
            "transformer", architecture, _config_variant(config, architecture), details, "diffusers"
        )
    if name == "AutoencoderKL":
        return ModelIdentity("vae", "unknown", "", details, "diffusers")
    if name in _VISION_CLASSES:
        vision = config.get("vision_config", config)
        key = (vision.get("hidden_size"), vision.get("num_hidden_layers"))
        variant = {(1024, 24): "vit_l", (1280, 32): "vit_h", (1664, 48): "vit_g"}.get(key, "")
        return ModelIdentity("clip_vision", "unknown", variant, details, "diffusers")
    if name in _TEXT_CLASSES:
        variant = "t5xxl" if name.startswith("T5") and config.get("d_model") == 4096 else ""
        if name.startswith("CLIP"):
            variant = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}.get(config.get("hidden_size"), "clip")
        return ModelIdentity("text_encoder", "unknown", variant or "t5", details, "diffusers")
    return ModelIdentity(details=details)


# -- loading -------------------------------------------------------------------------


def load_state_dict(
    path: str | os.PathLike[str], allow_pickle: bool = False, device: str = "cpu"
) -> dict[str, Any]:
    """Load a file's tensors as a flat ``{name: tensor}`` dict on ``device``.

    Safetensors are loaded with ``safetensors.torch.load_file``. Pickles are refused
    (:class:`UnsafeModelError`) unless ``allow_pickle``, and even then loaded with
    ``torch.load(weights_only=True)``; a pickle that holds code objects is refused.
    Nested pickled dicts are flattened with dots (the h94 IP-Adapter ``.bin`` becomes
    ``image_proj.*`` / ``ip_adapter.*``, as in its ``.safetensors`` twin).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        read_safetensors_header(path)  # a clear error for truncated files
        from safetensors.torch import load_file

        return load_file(str(path), device=str(device))
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise _pickle_refused(path)
        tensors: dict[str, Any] = {}
        _flatten(_unwrap(_torch_load(path, device)), "", tensors, {})
        return tensors
    raise ModelFormatError(
        f"{path}: ctrlgen loads tensors from .safetensors (or, when allowed, .ckpt/.pt/.pth/.bin) files, "
        f"not {suffix or 'files without an extension'}"
    )
