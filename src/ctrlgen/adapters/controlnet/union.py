"""SDXL union ControlNets (xinsir's ``controlnet-union-sdxl-1.0`` and ProMax): one model, many controls.

A union model is told what its control image is by a *control type*, diffusers'
``control_mode`` index (the model card's table):

====  ==========  ===========================================================
 0    openpose    OpenPose / DWPose skeletons
 1    depth       depth maps (MiDaS, Zoe, LeReS, Depth Anything)
 2    hed         thick soft lines: HED, PiDiNet, scribbles, TEED
 3    canny       thin lines: Canny, lineart, anime lineart, MLSD
 4    normal      normal maps
 5    segment     semantic segmentation
 6    tile        tile / blur (ProMax)
 7    repaint     inpaint and outpaint: the picture with the masked pixels black (ProMax)
====  ==========  ===========================================================

A unit's ``control_type`` defaults (``auto``) from its preprocessor when that is unambiguous.
"""

from __future__ import annotations

from ctrlgen.core.errors import JobError

CONTROL_TYPES = ("openpose", "depth", "hed", "canny", "normal", "segment", "tile", "repaint")
CONTROL_TYPE_CHOICES = ("auto", *CONTROL_TYPES)

# Preprocessor name prefix -> control type, longest prefix first when they overlap.
_FROM_PREPROCESSOR = (
    ("dw_openpose", "openpose"),
    ("mediapipe_openpose", "openpose"),
    ("openpose", "openpose"),
    ("depth", "depth"),
    ("softedge", "hed"),
    ("scribble", "hed"),
    ("canny", "canny"),
    ("lineart", "canny"),
    ("mlsd", "canny"),
    ("normal", "normal"),
    ("seg_", "segment"),
    ("tile", "tile"),
    ("blur", "tile"),
    ("inpaint", "repaint"),
)


def control_type_for(preprocessor: str) -> str | None:
    """The control type a preprocessor's maps are, or None when it is not obvious (``none``, ``shuffle``)."""
    name = preprocessor.strip().lower()
    for prefix, control_type in _FROM_PREPROCESSOR:
        if name.startswith(prefix):
            return control_type
    return None


def resolve_control_type(requested: str, preprocessor: str, num_control_types: int, label: str) -> int:
    """The ``control_mode`` index for a union unit; a clear error when it cannot be chosen or the
    model lacks it (the first union release has 6 types, ProMax 8)."""
    name = requested
    if requested == "auto":
        name = control_type_for(preprocessor)
        if name is None:
            raise JobError(
                f"{label}: cannot tell which control type preprocessor {preprocessor!r} gives a union "
                f"ControlNet; set {label}.control_type to one of {', '.join(CONTROL_TYPES)}"
            )
    index = CONTROL_TYPES.index(name)
    if index >= num_control_types:
        raise JobError(
            f"{label}: control_type {name!r} needs a union ControlNet with {index + 1} or more control types "
            f"(ProMax has {len(CONTROL_TYPES)}); this one has {num_control_types}: "
            f"{', '.join(CONTROL_TYPES[:num_control_types])}"
        )
    return index


def check_one_control_mode(units) -> None:
    """Units that share one union ControlNet run in one pass: they need one ``control_mode``."""
    control_modes = {u.params["control_mode"] for u in units}
    if len(control_modes) > 1:
        raise JobError(
            f"control units {', '.join(str(u.index) for u in units)} share the union ControlNet "
            f"{units[0].model_entry.name!r}, which runs them in one pass; give them one control_mode "
            f"(got {', '.join(sorted(control_modes))})"
        )
