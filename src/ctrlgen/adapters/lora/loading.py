"""LoRA helpers: A1111's ``<lora:...>`` prompt tags and the diffusers/PEFT adapter bookkeeping.

Loading goes through diffusers' verbs (``load_lora_weights`` with a unique ``adapter_name``,
``set_adapters``); restoring through ``delete_adapters`` and, once no adapter is left,
``unload_lora_weights``, which takes PEFT's wrapper layers out again and puts the original
modules (same objects, same tensors) back. Adapters another ctrlgen adapter loaded (an
IP-Adapter FaceID LoRA, say) stay loaded and active with their own scales.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from ctrlgen.core.errors import JobError

# A1111's extra-network syntax (modules/extra_networks.py); LyCORIS' extension adds <lyco:...>.
TAG = re.compile(r"<(lora|lyco):([^>]+)>", re.IGNORECASE)


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA to apply: a model reference, the UNet and text-encoder scales, and where it came from."""

    model: str
    weight: float
    text_encoder_weight: float
    origin: str


def parse_tag(tag: str, arguments: str) -> LoraRequest:
    """``<lora:name:te:unet>`` with A1111's meaning: the first number scales the text encoder and,
    unless a second is given, the UNet too; ``te=`` / ``unet=`` name them (``dyn=`` is ignored)."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in arguments.split(":"):
        key, equals, value = item.partition("=")
        if equals:
            named[key.strip().lower()] = value.strip()
        else:
            positional.append(item.strip())
    if not positional or not positional[0]:
        raise JobError(f"prompt tag {tag} names no LoRA; write <lora:NAME:WEIGHT>")

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise JobError(f"prompt tag {tag}: {text!r} is not a number (write e.g. <lora:name:0.8>)")
        return value

    te_weight = number(positional[1]) if len(positional) > 1 else 1.0
    te_weight = number(named["te"]) if "te" in named else te_weight
    unet_weight = number(positional[2]) if len(positional) > 2 else te_weight
    unet_weight = number(named["unet"]) if "unet" in named else unet_weight
    return LoraRequest(positional[0], unet_weight, te_weight, f"prompt tag {tag}")


def take_prompt_tags(text: str) -> tuple[str, list[LoraRequest]]:
    """The prompt without its ``<lora:...>`` tags (removed as A1111 does) and the requests they make."""
    requests: list[LoraRequest] = []

    def take(match: re.Match[str]) -> str:
        requests.append(parse_tag(match.group(0), match.group(2)))
        return ""

    return TAG.sub(take, text), requests


class _DropNoise(logging.Filter):
    # A LoRA without text-encoder keys (LCM-LoRA) is normal, not worth a warning per job.
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No LoRA keys associated to")


@contextlib.contextmanager
def _quiet_loading():
    """Silence what loading several adapters into one model reports as if it were a problem."""
    import warnings

    # transformers prints the text encoder's *other* adapters' keys as "MISSING" every time one
    # more adapter is loaded into it, and PEFT warns that a model holds several adapters.
    report = logging.getLogger("transformers.integrations.peft")
    level = report.level
    report.setLevel(logging.ERROR)
    noise = _DropNoise()
    loggers = [logging.getLogger(name) for name in ("diffusers.loaders.lora_base", "diffusers.loaders.peft")]
    for logger in loggers:
        logger.addFilter(noise)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        report.setLevel(level)
        for logger in loggers:
            logger.removeFilter(noise)


def _tuner_layers(model: Any):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return (module for module in model.modules() if isinstance(module, BaseTunerLayer))


class LoadedLoras:
    """The LoRAs one job loaded into ``pipeline``'s (shared) modules; :meth:`restore` takes them out."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.names: list[str] = []  # adapter names this job created (also on partial failure)
        self.weights: dict[str, tuple[float, float]] = {}
        self.foreign = self._active_weights()

    def _components(self) -> dict[str, Any]:
        return {name: getattr(self.pipeline, name, None) for name in self.pipeline._lora_loadable_modules
                if getattr(self.pipeline, name, None) is not None}

    def _active_weights(self) -> dict[str, dict[str, float]]:
        """Adapters already active before this job (loaded by another adapter), with their scales."""
        weights: dict[str, dict[str, float]] = {}
        for component, model in self._components().items():
            for layer in _tuner_layers(model):
                for name in layer.active_adapters:
                    if name in layer.scaling and component not in weights.setdefault(name, {}):
                        weights[name][component] = layer.scaling[name] * layer.r[name] / layer.lora_alpha[name]
                break
        return weights

    def load(self, state_dict: dict[str, Any], request: LoraRequest) -> None:
        name = f"ctrlgen_lora_{len(self.names)}"
        self.names.append(name)
        self.weights[name] = (request.weight, request.text_encoder_weight)
        with _quiet_loading():
            self.pipeline.load_lora_weights(state_dict, adapter_name=name)

    def activate(self) -> None:
        """``set_adapters`` with this job's scales (and the other adapters' own, kept as they were)."""
        present = self.pipeline.get_list_adapters()
        names, weights = [], []
        for name, scales in self.foreign.items():
            names.append(name)
            weights.append(scales)
        for name, (unet_weight, te_weight) in self.weights.items():
            names.append(name)
            weights.append({component: unet_weight if component in ("unet", "transformer") else te_weight
                            for component, adapters in present.items() if name in adapters})
        if names:
            self.pipeline.set_adapters(names, weights)

    def restore(self) -> None:
        if not self.names:
            return
        present = {name for names in self.pipeline.get_list_adapters().values() for name in names}
        mine = [name for name in self.names if name in present]
        if mine:
            self.pipeline.delete_adapters(mine)
        if not any(self.pipeline.get_list_adapters().values()):
            # delete_adapters leaves PEFT's wrapper layers in place; this swaps the original
            # modules back, so the cached pipeline is exactly as it was.
            self.pipeline.unload_lora_weights()
        elif self.foreign:
            self.pipeline.set_adapters(list(self.foreign), list(self.foreign.values()))
