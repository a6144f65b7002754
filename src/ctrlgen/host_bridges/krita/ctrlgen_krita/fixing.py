"""The Fix workspace's logic without Qt or Krita: which detectors, the fix job, its detections.

A fix runs in two steps so the artist sees what will be repainted before anything is:

1. **Detect** — a ``fix`` job whose pass repaints nothing (its prompt is ``[SKIP]``, which the
   detailer reads as "found, listed, left alone", docs/fixing.md). The server runs the detector,
   its selection and mask options, and reports the boxes in its ``detail`` event (phase
   ``detected``); no model denoises, so this is quick. The docker draws the boxes.
2. **Run** — the same pass with the artist's prompt and strength; the fixed picture comes back
   as a new layer.

The server has no detection-only route (``POST /v1/detect``) yet; step 1 is the way to the same
answer through the job API (it does resolve the checkpoint, but loads no weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .logic import DocumentError, Rect, Settings, check_settings

# What each Fix button looks for, and the detector tried first where the server has several.
TARGETS = {"faces": ("face", "mediapipe_face_full"), "hands": ("hand", "mediapipe_hands")}
SKIP_ALL = "[SKIP]"  # the detailer's "leave this detection alone"; the last prompt repeats


@dataclass
class FixSettings:
    """The Fix workspace's controls."""

    face_detector: str = ""  # empty: the preferred one the server has
    hand_detector: str = ""
    prompt: str = ""  # empty: the Generate prompt; [PROMPT] inserts it; [SEP] per detection
    strength: float = 0.4  # the pass's denoise
    confidence: float = 0.3
    # More pass fields (docs/fixing.md's table: dilate_erode, mask_blur, guide_size, ...).
    options: dict[str, Any] = field(default_factory=dict)


def detectors_for(capabilities: dict[str, Any], target: str) -> list[str]:
    """The server's detectors that find ``target`` (``faces`` or ``hands``), the preferred first."""
    label, preferred = TARGETS[target]
    names = sorted(d["name"] for d in capabilities.get("detectors", [])
                   if d.get("name") and label in d.get("finds", []))
    return sorted(names, key=lambda name: name != preferred)


def choose_detector(capabilities: dict[str, Any], target: str, chosen: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"fix target is 'faces' or 'hands', not {target!r}")
    names = detectors_for(capabilities, target)
    if chosen:
        if capabilities and chosen not in names:
            raise DocumentError(f"The server has no detector {chosen!r} for {target}; pick one of "
                                f"{', '.join(names) or 'none'} (Connect to refresh the list).")
        return chosen
    if not names:
        raise DocumentError(f"The server has no detector for {target}: install mediapipe where `ctrlgen serve` "
                            "runs (`pip install ctrlgen[detectors]`), then Connect again.")
    return names[0]


def build_fix_job(settings: Settings, fix: FixSettings, detector: str, detect_only: bool) -> dict[str, Any]:
    """The ``fix`` job (without its image, which the worker uploads into ``job["image"]``).
    ``detect_only``: the pass repaints nothing and only reports what it found."""
    check_settings(settings)
    if not 0.0 < fix.strength <= 1.0:
        raise DocumentError(f"Fix strength is {fix.strength:.2f}; it must be above 0 and at most 1.")
    detail_pass: dict[str, Any] = {**fix.options, "detector": detector, "confidence": float(fix.confidence),
                                   "denoise": float(fix.strength),
                                   "prompt": SKIP_ALL if detect_only else fix.prompt}
    return {"task": "fix", "model": settings.model, "prompt": settings.prompt,
            "negative_prompt": settings.negative_prompt, "seed": int(settings.seed), "steps": int(settings.steps),
            "cfg_scale": float(settings.cfg_scale), "sampler": settings.sampler, "detail": [detail_pass]}


def detected_boxes(kind: str, data: dict[str, Any]) -> list[tuple[int, int, int, int]] | None:
    """The boxes ``(x0, y0, x1, y1)`` in a job event, if it is the pass's ``detected`` event."""
    if kind != "detail" or data.get("phase") != "detected":
        return None
    return [tuple(int(round(v)) for v in box[:4]) for box in data.get("boxes", [])]  # type: ignore[misc]


def found_message(target: str, boxes: list, where: str) -> str:
    noun = target[:-1] if len(boxes) == 1 else target
    if not boxes:
        return (f"No {target} found in the {where}. Lower the detector's confidence in the Fix options, "
                "or select a larger area.")
    return f"Found {len(boxes)} {noun} in the {where} (outlined in the preview): Run fix, or Cancel."


def boxes_in_document(boxes: list, region: Rect) -> list[tuple[int, int, int, int]]:
    """Boxes found in the region's picture, moved to document coordinates."""
    return [(x0 + region.x, y0 + region.y, x1 + region.x, y1 + region.y) for x0, y0, x1, y1 in boxes]
