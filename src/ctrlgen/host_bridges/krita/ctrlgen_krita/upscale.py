"""The Upscale workspace: enlarge the visible canvas with the server's ``upscale`` task (an
upscaler model or a resampler, then a tiled refine), resize the document to the new size (every
layer scaled) and add the refined picture as a new layer on top. GUI thread only."""

from __future__ import annotations

import copy
from typing import Any

from . import kritadoc
from .logic import (
    Capture,
    DocumentError,
    Rect,
    UpscaleSettings,
    build_upscale_job,
    check_color_space,
    upscale_target,
)


def start_upscale(controller: Any, up: UpscaleSettings) -> int | None:
    """Read the visible canvas now and queue an upscale job; returns its queue key or None (then
    ``controller.message`` says why). The document is resized when the result arrives
    (:func:`resize_document`), so a failed or cancelled job leaves it as it was."""
    if not controller._can_send():
        return None
    doc = controller.document()
    up = copy.deepcopy(up)
    try:
        if doc is None:
            raise DocumentError("Open or create a document first.")
        check_color_space(doc.colorModel(), doc.colorDepth())
        settings = controller._job_settings()
        width, height = int(doc.width()), int(doc.height())
        target = upscale_target(width, height, up)
        doc.waitForDone()
        bgra = bytes(doc.pixelData(0, 0, width, height))
        build_upscale_job(settings, up, b"", width, height)  # the checks, before anything is queued
    except DocumentError as exc:
        controller.message = str(exc)
        return None
    # The result covers the whole enlarged document; it goes on top of the stack.
    capture = Capture(task="upscale", region=Rect(0, 0, *target), image=bgra)
    settings.prompt = up.prompt.strip() or settings.prompt
    settings.strength = up.denoise
    return controller._start(doc, capture, "upscale", settings,
                             lambda: build_upscale_job(settings, up, bgra, width, height), kind="upscale")


def resize_document(doc: Any, region: Rect) -> None:
    """Scale the document (every layer) to ``region``'s size, as Image > Scale Image does (one
    step on the undo stack), unless it has that size already."""
    if (int(doc.width()), int(doc.height())) == (region.width, region.height):
        return
    kritadoc._changing[0] += 1
    try:
        doc.scaleImage(region.width, region.height, int(doc.xRes()), int(doc.yRes()), "Bicubic")
        doc.waitForDone()
        doc.refreshProjection()
    finally:
        kritadoc._changing[0] -= 1
