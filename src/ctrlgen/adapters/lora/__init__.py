"""LoRA: low-rank weight patches from the model store's ``loras`` folder, for one job.

Each use loads one file (kohya/sd-scripts, diffusers or PEFT format; LCM-LoRA included) with
diffusers' ``load_lora_weights`` under its own adapter name, at ``weight`` on the UNet and
``text_encoder_weight`` on the text encoder(s); several combine. The prompt's A1111 tags
``<lora:name:weight>`` (and ``<lora:name:te:unet>``, ``te=``/``unet=``) are taken out of the
prompt and negative prompt and loaded the same way. Everything is unloaded after the job
(success, error or cancel), leaving the cached pipeline's modules exactly as they were.
"""

from __future__ import annotations

import contextlib
import importlib.util

from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import AdapterSpec, Param

PARAMS = (
    Param("model", "model", category="loras",
          description="LoRA file from the model store (kohya, diffusers or PEFT format); leave it out to "
                      "apply only the prompt's <lora:name:weight> tags"),
    Param("weight", "float", default=1.0, min=-5.0, max=5.0, step=0.05,
          description="Scale of the LoRA on the UNet (A1111's unet multiplier)"),
    Param("text_encoder_weight", "float", min=-5.0, max=5.0, step=0.05,
          description="Scale on the text encoder(s) (A1111's te multiplier); default: the same as weight"),
)


def _requests(context, uses):
    from ctrlgen.adapters.lora.loading import LoraRequest, take_prompt_tags

    requests = []
    for index, use in enumerate(uses):
        if use["model"] is not None:
            te_weight = use["weight"] if use["text_encoder_weight"] is None else use["text_encoder_weight"]
            requests.append(LoraRequest(use["model"], use["weight"], te_weight, f"lora use {index + 1}"))
    context.prompt, tagged = take_prompt_tags(context.prompt)
    context.negative_prompt, tagged_negative = take_prompt_tags(context.negative_prompt)
    return requests + tagged + tagged_negative


def _entry(context, request):
    """The store entry of one request, checked from its header: a LoRA diffusers can load, for
    the checkpoint's architecture."""
    from ctrlgen.core.errors import CtrlgenError, JobError

    try:
        entry = context.store.find(request.model, category="loras")
    except CtrlgenError as exc:  # same type, the message names the request
        exc.args = (f"{request.origin}: {exc}",)
        raise exc.with_traceback(None) from None
    identity = entry.identity
    if identity.kind != "lora":
        raise JobError(f"{request.origin}: {entry.path} is a {identity.kind}, not a LoRA")
    if identity.format == "lycoris":
        raise JobError(f"{request.origin}: {entry.path} is a LyCORIS (LoHa/LoKr) file, which diffusers cannot load; "
                       "use a plain LoRA/LoCon")
    if identity.architecture not in ("unknown", context.architecture):
        raise JobError(f"{request.origin}: {entry.name} is a LoRA for {identity.architecture} models, but the "
                       f"checkpoint is {context.architecture}; pick a LoRA trained for {context.architecture}")
    return entry


def _state_dict(context, request):
    """The LoRA's tensors, read once per engine and file (path, mtime, size); each job gets its own
    dict over them (diffusers' converters pop and rename keys of the dict they are given)."""
    from ctrlgen.core.models.identify import load_state_dict

    entry = _entry(context, request)
    allow_pickle = context.store.allow_pickle
    read = lambda: load_state_dict(entry.path, allow_pickle=allow_pickle)  # noqa: E731
    engine = getattr(context, "engine", None)
    return dict(engine.load_file(entry.path, f"lora:{allow_pickle}", read) if hasattr(engine, "load_file")
                else read())


def check_lora(context, uses):
    """The spec's ``check``: every LoRA the uses and the prompts' tags name is found and usable
    (by its header), the tags parse, and peft (which loads them) is installed."""
    from ctrlgen.core.errors import JobError

    requests = _requests(context, uses)
    if requests and importlib.util.find_spec("peft") is None:
        raise JobError("LoRAs need the 'peft' package (diffusers loads LoRAs through it): pip install peft")
    for request in requests:
        _entry(context, request)


@contextlib.contextmanager
def attach_lora(context, uses):
    """Load the uses' and prompt tags' LoRAs into ``context.pipeline``; unload them on exit."""
    from ctrlgen.adapters.lora.loading import LoadedLoras
    from ctrlgen.core.errors import JobError

    requests = _requests(context, uses)
    if not requests:
        yield context
        return
    if importlib.util.find_spec("peft") is None:
        raise JobError("LoRAs need the 'peft' package (diffusers loads LoRAs through it): pip install peft")
    loaded = LoadedLoras(context.pipeline)
    try:
        for request in requests:
            state_dict = _state_dict(context, request)
            try:
                loaded.load(state_dict, request)
            except (ValueError, KeyError, RuntimeError) as exc:
                reason = str(exc) if len(str(exc)) < 400 else str(exc)[:400] + " ..."
                raise JobError(f"{request.origin}: {request.model!r} could not be loaded into this "
                               f"{context.architecture} pipeline: {reason}") from exc
        loaded.activate()
        yield context
    finally:
        loaded.restore()


@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(
        name="lora",
        attach=attach_lora,
        check=check_lora,
        params=PARAMS,
        description="LoRA weight patches (several at once, LCM-LoRA, A1111 <lora:name:weight> prompt tags)",
        architectures=("sd15", "sd2", "sdxl"),
        requires=("diffusers", "peft"),
        always=True,
    )
