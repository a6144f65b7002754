"""Model files: where they are and what they are (imports ``core.plugins`` and the shared ground,
never ``core.engine`` or ``core.cli``).

- ``store.py`` — :class:`ModelStore`: scans the model roots, resolves a job's model names to files.
- ``layouts.py`` — the folder layouts people already have (A1111, ComfyUI, Hugging Face cache).
- ``identify.py`` — what a file is, from its safetensors header (and ``load_state_dict``);
  ``base_rules.py`` (checkpoints: SD1.5, SD2, SDXL, SD3, FLUX, inpaint) and ``addon_rules.py``
  (ControlNet, LoRA, IP-Adapter, VAE, embeddings) are the rules it applies.
- ``loading.py`` — single-file and folder checkpoints into diffusers components.
- ``configs.py`` — the diffusers configs shipped for offline loading; ``tokenizer.py`` — the
  CLIP tokenizer built offline.
- ``sources.py`` — the built-in ``ctrlgen_model_sources`` plugin (configured roots, HF cache).
- ``pull.py`` — ``ctrlgen models pull`` (the only network use).
- ``annotators.py`` — preprocessor weight files, found in the store and loaded once.
- ``device.py`` — the device and precision to load and run on.

``from ctrlgen.core.models import ModelStore`` works (resolved on first use).
"""

from __future__ import annotations

_EXPORTS = ("AmbiguousModelError", "ModelEntry", "ModelStore", "identify_cached")


def __getattr__(name: str):
    if name in _EXPORTS:
        from ctrlgen.core.models import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
