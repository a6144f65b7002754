"""Load A1111/ComfyUI single-file checkpoints, ControlNets and diffusers folders, fully offline.

diffusers' ``from_single_file`` needs a diffusers config folder to turn an original-format
file into a pipeline, and normally downloads it. ctrlgen assembles that folder in its cache
(:mod:`ctrlgen.core.models.configs`) and calls ``from_single_file(config=folder,
local_files_only=True)``. The configs come from the file's **sidecar** ``<stem>.config.json``
when it has one (non-standard shapes, e.g. the tiny test models), else from the **bundled
configs** of the architecture (``sd15``, ``sd2``, ``sd2-v``, ``sdxl``; ControlNets for each).

With the bundled configs, a few facts are taken from the file itself: an inpainting UNet's
input channels (from the safetensors header), v-prediction from an A1111 ``<stem>.yaml``
(``parameterization: "v"``) or ComfyUI's ``v_pred`` marker tensor, and for plain ``sd2``
whether it is the v model (ComfyUI's test on one norm bias). A ControlNet's
``<stem>.yaml`` with ``global_average_pooling: true`` (the shuffle model) is honoured too.

Every failure is raised as :class:`~ctrlgen.core.errors.ModelFormatError` (or
``ModelNotFoundError``/``UnsafeModelError``) naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ctrlgen.core.errors import CtrlgenError, ModelFormatError, ModelNotFoundError, UnsafeModelError
from ctrlgen.core.models.configs import (
    CONTROLNET_CONFIGS,
    SIDECAR_FORMAT,
    SIDECAR_SUFFIX,
    bundled_config_files,
    link_or_copy,
    materialize_config_folder,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

__all__ = [  # the config helpers are re-exported: callers need only this module
    "CONTROLNET_CONFIGS",
    "SIDECAR_FORMAT",
    "SIDECAR_SUFFIX",
    "bundled_config_files",
    "is_union_header",
    "link_or_copy",
    "load_controlnet",
    "load_pipeline_from_folder",
    "load_pipeline_from_single_file",
    "materialize_config_folder",
    "normalize_architecture",
    "pipeline_config_files",
    "read_safetensors_header",
    "read_sidecar",
    "sidecar_path",
    "write_sidecar",
]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

_ALIASES = {
    "sd1": "sd15",
    "sd1.5": "sd15",
    "sd-1.5": "sd15",
    "sd15": "sd15",
    "sd1x": "sd15",
    "sd1.x": "sd15",
    "sd2": "sd2",
    "sd2x": "sd2",
    "sd2.x": "sd2",
    "sd20": "sd2",
    "sd21": "sd2",
    "sd2-eps": "sd2-eps",
    "sd2-v": "sd2-v",
    "sd21-v": "sd2-v",
    "sdxl": "sdxl",
    "sdxl-base": "sdxl",
    "sd-xl": "sdxl",
    "xl": "sdxl",
}
_DEFAULT_PIPELINES = {"sdxl": "StableDiffusionXLPipeline"}
_SD2_V_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
_UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


def normalize_architecture(architecture: str) -> str:
    """``"SD1.5"`` -> ``"sd15"``, ``"sdxl_base"`` -> ``"sdxl"``; an ``-inpaint`` suffix is dropped.

    Results: ``sd15``, ``sd2`` (v or epsilon decided from the file), ``sd2-v``, ``sd2-eps``, ``sdxl``.
    """
    key = str(architecture).strip().lower().replace("_", "-").replace(" ", "-")
    key = re.sub(r"-?(inpaint|inpainting)$", "", key)
    if key not in _ALIASES:
        known = ", ".join(sorted(set(_ALIASES.values())))
        raise ModelFormatError(
            f"architecture {architecture!r} is not supported for single-file loading; known: {known}"
        )
    return _ALIASES[key]


# ---------------------------------------------------------------- file inspection


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor name -> {dtype, shape, data_offsets}; raises ModelFormatError for a corrupt/truncated file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ModelFormatError(f"{path} is too short ({size} bytes) to be a safetensors file")
            length = int.from_bytes(prefix, "little")
            if length < 2 or length > 100_000_000 or 8 + length > size:
                raise ModelFormatError(
                    f"{path} has an invalid safetensors header length ({length}); is it corrupt?"
                )
            header = json.loads(handle.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is not a readable safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path} has a malformed safetensors header")
    header.pop("__metadata__", None)
    try:
        end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise ModelFormatError(f"{path} has a malformed safetensors header (bad data_offsets)") from None
    if 8 + length + end > size:
        raise ModelFormatError(
            f"{path} is truncated: its header describes {8 + length + end} bytes but the file has {size}; "
            "download it again"
        )
    return header


def _check_file(path: Path, allow_pickle: bool) -> dict[str, dict[str, Any]] | None:
    """Existence and format checks; the header for safetensors files, None for allowed pickles."""
    if not path.exists():
        raise ModelNotFoundError(f"model file {path} does not exist; check the path or the model folder")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeModelError(
                f"{path} is a pickled checkpoint, which can run code when loaded; convert it to .safetensors "
                "or allow pickles explicitly (allow_pickle = true in config.toml / CTRLGEN_ALLOW_PICKLE=1); "
                "even then it is read with torch.load(weights_only=True)"
            )
        return None
    if path.suffix.lower() != ".safetensors":
        raise ModelFormatError(
            f"{path} is neither .safetensors nor a known checkpoint type ({', '.join(PICKLE_SUFFIXES)})"
        )
    return read_safetensors_header(path)


def _describe_keys(header: Mapping[str, Any]) -> str:
    keys = list(header)
    if any(k.startswith(("lora_", "lora.")) or ".lora_" in k for k in keys[:200]):
        return "it looks like a LoRA"
    if any(k.startswith(("control_model.", "controlnet_cond_embedding.", "input_hint_block.")) for k in keys):
        return "it looks like a ControlNet"
    if any(k.startswith(("encoder.down", "decoder.up")) for k in keys):
        return "it looks like a VAE"
    if any(k.startswith("down_blocks.") for k in keys):
        return "it looks like a diffusers-format UNet, not a full checkpoint"
    return f"its first tensors are {', '.join(keys[:3]) or 'none'}"


def _yaml_sidecar(path: Path) -> dict[str, Any]:
    """A1111's ``<stem>.yaml`` (original LDM config) next to a checkpoint, parsed; {} when absent."""
    yaml_path = path.with_suffix(".yaml")
    if not yaml_path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelFormatError(
            f"{yaml_path} (the original config next to {path.name}) is not valid YAML: {exc}"
        ) from None
    return data if isinstance(data, dict) else {}


def _find_key(data: Any, key: str) -> Any:
    """First value of ``key`` anywhere in nested dicts (LDM yaml nesting varies between files)."""
    if isinstance(data, dict):
        if key in data:
            return data[key]
        for value in data.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def _is_sd2_v_model(path: Path, header: Mapping[str, Any]) -> bool:
    """ComfyUI's heuristic: the v model's last output norm bias is spread wider than the base model's."""
    if _SD2_V_PROBE not in header:
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        bias = handle.get_tensor(_SD2_V_PROBE).float()
    return float(bias.std(unbiased=False)) > 0.09


def pipeline_config_files(
    path: Path, architecture: str, header: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The diffusers config files used to load checkpoint ``path``: its sidecar, else the
    bundled configs for ``architecture`` adjusted by what the file says (see the module doc).

    ``header`` is the file's safetensors header (read here when None and the file is one).
    """
    path = Path(path)
    if header is None and path.suffix.lower() == ".safetensors":
        header = read_safetensors_header(path)
    sidecar = read_sidecar(path)
    if sidecar is not None:
        return sidecar
    arch = normalize_architecture(architecture)
    original = _yaml_sidecar(path)
    v_prediction = _find_key(original, "parameterization") == "v" or (
        header is not None and "v_pred" in header
    )
    if arch == "sd2-eps":
        name = "sd2"
    elif arch == "sd2":
        name = "sd2-v" if v_prediction or (header is not None and _is_sd2_v_model(path, header)) else "sd2"
    else:
        name = arch
    files = bundled_config_files(name)
    if v_prediction:
        files["scheduler/scheduler_config.json"]["prediction_type"] = "v_prediction"
    if header is not None and _UNET_CONV_IN in header:
        in_channels = int(header[_UNET_CONV_IN]["shape"][1])
        files["unet/config.json"]["in_channels"] = in_channels  # 9 for inpainting UNets
    return files


# ---------------------------------------------------------------- loaders


def load_pipeline_from_single_file(
    path: Path,
    architecture: str,
    pipeline_cls_name: str | None = None,
    torch_dtype: Any = None,
    *,
    cache_dir: Path | None = None,
    allow_pickle: bool = False,
    **components: Any,
) -> Any:
    """A diffusers pipeline from an original-format checkpoint (A1111 ``Stable-diffusion``,
    ComfyUI ``checkpoints``), without network access.

    ``architecture``: ``sd15``, ``sd2``, ``sd2-v``, ``sd2-eps`` or ``sdxl`` (see
    :func:`normalize_architecture`). ``pipeline_cls_name`` defaults to
    ``StableDiffusionXLPipeline`` for SDXL, else ``StableDiffusionPipeline``; any pipeline
    class with the same components works (e.g. ``StableDiffusionControlNetPipeline`` with
    ``controlnet=...`` in ``components``, which are passed through as ready-made parts).
    """
    path = Path(path)
    header = _check_file(path, allow_pickle)
    if header is not None and not any(k.startswith("model.diffusion_model.") for k in header):
        raise ModelFormatError(
            f"{path} has no Stable Diffusion UNet weights (no 'model.diffusion_model.*' tensors); "
            f"{_describe_keys(header)}. Put full checkpoints in the checkpoint folder"
        )
    arch = normalize_architecture(architecture)
    name = pipeline_cls_name or _DEFAULT_PIPELINES.get(arch, "StableDiffusionPipeline")
    config_dir = materialize_config_folder(pipeline_config_files(path, arch, header), cache_dir)
    pipeline_cls = _diffusers_class(name)
    if "safety_checker" in _signature(pipeline_cls) and "safety_checker" not in components:
        components.update(safety_checker=None, requires_safety_checker=False)
    try:
        with _quiet_diffusers():
            pipe = pipeline_cls.from_single_file(
                str(path),
                config=str(config_dir),
                local_files_only=True,
                torch_dtype=torch_dtype,
                **components,
            )
    except CtrlgenError:
        raise
    except Exception as exc:
        raise ModelFormatError(
            f"cannot load {path} as a {arch} checkpoint with {name}: {_first_line(exc)}. If it is another "
            f"architecture or a non-standard size, give the right architecture or put a sidecar config "
            f"({sidecar_path(path).name}) next to it"
        ) from exc
    for component_name, component in pipe.components.items():
        _check_no_meta(component, path, component_name)
    return pipe


def load_controlnet(
    path_or_folder: Path,
    architecture: str,
    torch_dtype: Any = None,
    *,
    cache_dir: Path | None = None,
    allow_pickle: bool = False,
) -> Any:
    """A ``ControlNetModel`` from a diffusers folder, an original-format file (``control_model.*``,
    as sd-webui-controlnet ships them) or a diffusers-format single file, offline.

    SDXL union ControlNets (xinsir's ``controlnet-union-sdxl-1.0`` and its ProMax weights) load
    as a ``ControlNetUnionModel``, from their folder or from the one diffusers-key file A1111 and
    ComfyUI users keep; see :func:`is_union_header`.
    """
    from diffusers import ControlNetModel, ControlNetUnionModel

    path = Path(path_or_folder)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelFormatError(
                f"{path} is a folder but not a diffusers ControlNet (no config.json in it)"
            )
        model_class = ControlNetUnionModel if _is_union_config(path / "config.json") else ControlNetModel
        try:
            model = model_class.from_pretrained(str(path), local_files_only=True, torch_dtype=torch_dtype)
        except Exception as exc:
            raise ModelFormatError(f"cannot load the ControlNet folder {path}: {_first_line(exc)}") from exc
        _check_no_meta(model, path, "controlnet")
        return model
    header = _check_file(path, allow_pickle)
    if header is not None and not any(
        k.startswith(("control_model.", "controlnet_cond_embedding.", "input_hint_block.")) for k in header
    ):
        raise ModelFormatError(
            f"{path} is not a ControlNet (no hint-encoder tensors); {_describe_keys(header)}"
        )
    if header is not None and is_union_header(header):
        return _load_union_file(path, header, architecture, torch_dtype)
    files = read_sidecar(path)
    if files is None:
        arch = normalize_architecture(architecture)
        files = bundled_config_files(CONTROLNET_CONFIGS[arch.split("-")[0]])
        if _find_key(_yaml_sidecar(path), "global_average_pooling"):
            files["config.json"]["global_pool_conditions"] = True
    config_dir = materialize_config_folder(files, cache_dir)
    # diffusers' converter drops an original-layout SDXL ControlNet's label_emb; building the
    # model on the meta device would then leave add_embedding empty, so build it for real.
    has_label_emb = header is not None and "control_model.label_emb.0.0.weight" in header
    try:
        with _quiet_diffusers():
            model = ControlNetModel.from_single_file(
                str(path),
                config=str(config_dir),
                local_files_only=True,
                torch_dtype=torch_dtype,
                **({"low_cpu_mem_usage": False} if has_label_emb else {}),
            )
        if has_label_emb:
            _load_label_embedding(model, path, torch_dtype)
    except CtrlgenError:
        raise
    except Exception as exc:
        raise ModelFormatError(
            f"cannot load {path} as a {architecture} ControlNet: {_first_line(exc)}. If it is for another "
            f"architecture or of another size, pass the right architecture or add a sidecar config "
            f"({sidecar_path(path).name})"
        ) from exc
    _check_no_meta(model, path, "controlnet")
    return model


_UNION_KEYS = ("task_embedding", "control_add_embedding.", "transformer_layes.", "spatial_ch_projs.")


def is_union_header(header: Mapping[str, Any]) -> bool:
    """Whether a diffusers-key ControlNet file is a union model (control-type embedding and the
    small transformer that mixes the control images; diffusers keeps xinsir's ``transformer_layes``)."""
    return any(key.startswith(_UNION_KEYS) for key in header)


def _is_union_config(config_path: Path) -> bool:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{config_path} is not readable JSON ({exc})") from None
    # diffusers writes ControlNetUnionModel; xinsir's own config says ControlNetModel_Union.
    return "union" in str(config.get("_class_name", "")).lower() or "num_control_type" in config


def _union_config(path: Path, header: Mapping[str, Any], architecture: str) -> dict[str, Any]:
    """The union model's config: the sidecar's, else the bundled SDXL ControlNet config with the
    union sizes read from the file (ProMax has 8 control types, the first release 6)."""
    files = read_sidecar(path)
    if files is not None:
        if "config.json" not in files:
            raise ModelFormatError(f"{sidecar_path(path)} has no config.json for the union ControlNet {path.name}")
        return dict(files["config.json"])
    arch = normalize_architecture(architecture)
    if arch != "sdxl":
        raise ModelFormatError(
            f"{path} is a union ControlNet; ctrlgen knows the SDXL ones only, not {architecture}. "
            f"Add a sidecar config ({sidecar_path(path).name}) if it is another shape"
        )
    config = bundled_config_files(CONTROLNET_CONFIGS["sdxl"])["config.json"]
    task = header.get("task_embedding", {}).get("shape")
    projection = header.get("spatial_ch_projs.weight", {}).get("shape")
    if not task or not projection:
        raise ModelFormatError(f"{path} looks like a union ControlNet but has no task_embedding/spatial_ch_projs")
    layers = {key.split(".")[1] for key in header if key.startswith("transformer_layes.")}
    config.update(
        _class_name="ControlNetUnionModel",
        num_control_type=int(task[0]),
        num_trans_channel=int(task[1]),
        num_trans_head=8,
        num_trans_layer=len(layers),
        num_proj_channel=int(projection[0]),
    )
    return config


def _load_union_file(path: Path, header: Mapping[str, Any], architecture: str, torch_dtype: Any) -> Any:
    """A ``ControlNetUnionModel`` from one diffusers-key file: built empty (meta device) from its
    config, then given the file's tensors. diffusers' ``from_single_file`` has no union support."""
    import torch
    from diffusers import ControlNetUnionModel
    from safetensors.torch import load_file

    config = _union_config(path, header, architecture)
    try:
        with torch.device("meta"):
            model = ControlNetUnionModel.from_config(config)
        state = load_file(str(path))
        if torch_dtype is not None:
            state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ModelFormatError(
                f"{path} does not match the union ControlNet config: missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}; the file is incomplete or another model (add a sidecar config "
                f"{sidecar_path(path).name} if its shape is non-standard)"
            )
        model.load_state_dict(state, strict=True, assign=True)
    except CtrlgenError:
        raise
    except Exception as exc:
        raise ModelFormatError(f"cannot load {path} as a union ControlNet: {_first_line(exc)}") from exc
    model.eval()
    _check_no_meta(model, path, "controlnet")
    return model


def _load_label_embedding(model: Any, path: Path, torch_dtype: Any) -> None:
    """SDXL ControlNets in the original layout keep SDXL's ``label_emb``; diffusers' converter
    skips it, so it is loaded here into ``add_embedding``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        weights = {
            f"{layer}.{param}": handle.get_tensor(f"control_model.label_emb.0.{index}.{param}")
            for layer, index in (("linear_1", 0), ("linear_2", 2))
            for param in ("weight", "bias")
        }
    if torch_dtype is not None:
        weights = {k: v.to(torch_dtype) for k, v in weights.items()}
    model.add_embedding.load_state_dict(weights, assign=True)


def load_vae(path: Path | str, config: Mapping[str, Any], torch_dtype: Any = None) -> Any:
    """A VAE (AutoencoderKL) from a diffusers folder, or from one safetensors file with diffusers
    or original (LDM) keys, built with ``config`` (the pipeline's own VAE config: SD1.5, SD2 and
    SDXL VAEs are the same network)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if path.is_dir():
        with _quiet_diffusers():
            return AutoencoderKL.from_pretrained(path, torch_dtype=torch_dtype)
    from safetensors.torch import load_file

    state = load_file(str(path))
    if any(key.startswith(("encoder.down.", "first_stage_model.", "vae.")) for key in state):  # original keys
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        for prefix in ("first_stage_model.", "vae."):
            if any(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        state = convert_ldm_vae_checkpoint(state, dict(config))
    vae = AutoencoderKL.from_config(dict(config))
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFormatError(
            f"{path} does not fit this checkpoint's VAE ({len(missing)} weights missing, {len(unexpected)} "
            f"unexpected, e.g. {(list(missing) + list(unexpected))[0]}); pick a VAE made for this architecture")
    return vae.to(torch_dtype) if torch_dtype is not None else vae


def load_pipeline_from_folder(
    folder: Path,
    pipeline_cls_name: str | None = None,
    torch_dtype: Any = None,
    **components: Any,
) -> Any:
    """A pipeline from a diffusers folder (``model_index.json`` + component folders), offline.

    The safety checker is not loaded (A1111, ComfyUI and Krita run without one) unless
    passed in ``components``.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ModelFormatError(f"{folder} is not a diffusers pipeline folder (no model_index.json in it)")
    pipeline_cls = _diffusers_class(pipeline_cls_name or "DiffusionPipeline")
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    if (
        isinstance(index.get("safety_checker"), list)
        and index["safety_checker"][0]
        and "safety_checker" not in components
    ):
        components.update(safety_checker=None, requires_safety_checker=False)
    # Components saved as absent ([null, null], e.g. SD3 without its T5 encoder) load as None.
    for name, value in index.items():
        if isinstance(value, list) and value and value[0] is None and name not in components:
            components[name] = None
    try:
        pipe = pipeline_cls.from_pretrained(
            str(folder), local_files_only=True, torch_dtype=torch_dtype, **components
        )
    except Exception as exc:
        raise ModelFormatError(f"cannot load the diffusers folder {folder}: {_first_line(exc)}") from exc
    for component_name, component in pipe.components.items():
        _check_no_meta(component, folder, component_name)
    return pipe


class _SpuriousFloat32Warning(logging.Filter):
    """diffusers warns "modules ... should be kept in float32: []" whenever a loader casts a
    model with no such modules (every ``from_single_file`` with a dtype); an empty list is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    logger = logging.getLogger("diffusers.models.modeling_utils")
    noise = _SpuriousFloat32Warning()
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


def _diffusers_class(name: str) -> Any:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ModelFormatError(f"diffusers {diffusers.__version__} has no pipeline class {name!r}")
    return cls


def _signature(cls: Any) -> Mapping[str, Any]:
    import inspect

    return inspect.signature(cls.__init__).parameters


def _check_no_meta(component: Any, source: Path, name: str) -> None:
    """A tensor a converter did not fill stays on the meta device; name it instead of failing later."""
    if not hasattr(component, "named_parameters"):
        return  # tokenizers, schedulers, None
    missing = [n for n, p in component.named_parameters() if p.device.type == "meta"]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelFormatError(
            f"{source}: the {name} is missing weights for {shown}; the file is incomplete or of another layout"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
