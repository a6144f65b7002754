"""Built-in model sources: the folders the user configured, and the Hugging Face cache.

``configured`` reads ``model_roots`` from ``config.toml`` and ``CTRLGEN_MODEL_ROOTS``
(each an A1111/Forge or ComfyUI install, its ``models`` folder, or a plain folder;
the layout is detected). ``huggingface_cache`` adds the hub cache when ``hf_cache`` is
on (the default) and the folder exists.
"""

from __future__ import annotations

from ctrlgen.core.config import Settings, load_settings
from ctrlgen.core.models.layouts import hf_cache_dir
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import ModelRoot, ModelSourceSpec


def configured_roots(settings: Settings | None = None) -> list[ModelRoot]:
    settings = settings if settings is not None else load_settings()
    return [ModelRoot(path, layout="auto") for path in settings.model_roots]


def huggingface_cache_roots(settings: Settings | None = None) -> list[ModelRoot]:
    settings = settings if settings is not None else load_settings()
    cache = hf_cache_dir()
    return [ModelRoot(cache, layout="hf-cache")] if settings.hf_cache and cache.is_dir() else []


_ROOTS = {"configured": configured_roots, "huggingface_cache": huggingface_cache_roots}


def roots_for(source: str, settings: Settings) -> list[ModelRoot]:
    """The roots of built-in ``source`` computed from explicit ``settings``."""
    return _ROOTS[source](settings)


@hookimpl
def ctrlgen_model_sources():
    yield ModelSourceSpec(
        name="configured",
        roots=configured_roots,
        description="model_roots in config.toml and CTRLGEN_MODEL_ROOTS (A1111, ComfyUI or plain folders)",
    )
    yield ModelSourceSpec(
        name="huggingface_cache",
        roots=huggingface_cache_roots,
        description="the Hugging Face hub cache (HF_HUB_CACHE, HF_HOME or ~/.cache/huggingface/hub)",
    )
