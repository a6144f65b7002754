"""Jobs in, pixels out (imports ``core.models``, ``core.plugins`` and the shared ground, never ``core.cli``).

- ``jobs.py`` — the :class:`Job` model: where a job is parsed and validated (field paths in errors).
- ``engine.py`` — :class:`Engine`: check a job before anything loads (``Engine.check``: what the
  server runs before queueing), resolve models, prepare inputs, assemble the pipeline, run it
  with progress/preview/cancel, composite and report; caches loaded pipelines.
- ``tasks.py`` — txt2img / img2img / inpaint: pipeline classes and job-local pipeline views.
- ``prompts.py`` — A1111 prompt syntax; ``conditioning.py`` — prompt embeddings from it.
- ``samplers.py`` — A1111 sampler names to diffusers schedulers.
- ``masks.py`` — grow, feather, invert, only-masked crops and compositing.
- ``memory.py`` — the low-VRAM plan (offload, VAE tiling/slicing) per job.
- ``preview.py`` — cheap latent previews; ``cancel.py`` — cancelling in every phase (the decode too).
- ``architectures.py`` — the built-in SD1.5/SD2/SDXL :class:`ArchitectureSpec` plugin.
- ``preprocess.py`` — running one preprocessor by name (params validated against its spec).

``from ctrlgen.core.engine import Engine`` works (resolved on first use).
"""

from __future__ import annotations

_EXPORTS = ("CheckedJob", "Engine", "GenerationContext", "ImageSource", "JobResult", "PreparedUnit", "fit_control",
            "infotext", "load_image_file", "read_image", "round_size")


def __getattr__(name: str):
    if name in _EXPORTS:
        from ctrlgen.core.engine import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
