"""A region's own IP-Adapter images: ``ip_adapter`` uses whose attention mask is the region's.

Each entry is written as an ``ip_adapter`` use of ``job.adapters`` without its ``type`` (model,
image, images, scale, ...); the region's mask becomes its ``mask`` param, so the reference acts
only where the region is (the IP-Adapter's own attention masking, diffusers'
``ip_adapter_masks``). The uses are checked and attached by the registered ``ip_adapter``
adapter itself, stacked with the job's own IP-Adapter uses; errors name
``adapters[i] (region).ip_adapter[k]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from ctrlgen.core.errors import CtrlgenError, JobError

ADAPTER = "ip_adapter"


def check_structure(value: Any) -> None:
    """The ``ip_adapter`` param's shape: a list of use objects (validated fully by :func:`uses_of`)."""
    if not isinstance(value, list) or not all(isinstance(use, dict) for use in value):
        raise ValueError('must be a list of IP-Adapter uses ({"model": ..., "image": ..., "scale": ...}), as in '
                         "job.adapters without their type")


def _spec(owner: str) -> Any:
    from ctrlgen.core.plugins.manager import get_registry

    registry = get_registry("adapters")
    if ADAPTER not in registry:
        raise JobError(f"{owner}.ip_adapter needs the ip_adapter adapter, which is not loaded (`ctrlgen plugins`)")
    return registry.get(ADAPTER)


def _relabelled(context: Any) -> Any:
    """``context`` as the IP-Adapter adapter sees a job of the region's uses alone (its errors then
    name ``ip_adapter[k]``); call arguments and the pipeline are shared with ``context``."""
    return dataclasses.replace(context, job=context.job.model_copy(update={"adapters": []}))


def _renamed(exc: CtrlgenError, owner: str) -> CtrlgenError:
    message = str(exc)
    if message.startswith("ip_adapter["):
        message = f"{owner}.{message}"
    elif not message.startswith(owner):
        message = f"{owner}.ip_adapter: {message}"
    exc.args = (message,)
    return exc.with_traceback(None)


def uses_of(context: Any, entries: list[dict], mask: str, owner: str) -> tuple[Any, list[dict[str, Any]]]:
    """The spec and the validated uses of a region's ``ip_adapter`` entries, masked by ``mask``;
    their models and images checked as the engine checks ``job.adapters`` (no weights load)."""
    from ctrlgen.core.plugins.specs import validate_params

    spec = _spec(owner)
    if context.architecture not in spec.architectures:
        raise JobError(f"{owner}.ip_adapter: the IP-Adapter supports {', '.join(spec.architectures)}, not this "
                       f"{context.architecture} checkpoint")
    uses = []
    for index, entry in enumerate(entries):
        label = f"{owner}.ip_adapter[{index}]"
        if "mask" in entry or "type" in entry:
            raise JobError(f"{label}: drop {'mask' if 'mask' in entry else 'type'}: a region's IP-Adapter acts under "
                           "the region's mask")
        params = validate_params(spec.params, {**entry, "mask": mask}, label)
        context.engine._check_resources(spec, params, label, context.image_source)
        uses.append(params)
    if spec.check is not None:
        try:
            spec.check(_relabelled(context), uses)
        except CtrlgenError as exc:
            raise _renamed(exc, owner) from None
    return spec, uses


@contextlib.contextmanager
def attached(context: Any, spec: Any, uses: list[dict[str, Any]], owner: str):
    """The region's IP-Adapter uses loaded for the job (the spec's own ``attach``, restored on exit)."""
    try:
        with spec.attach(_relabelled(context), uses):
            yield
    except CtrlgenError as exc:
        raise _renamed(exc, owner) from None
