"""OpenPose JSON and the standard OpenPose drawing, shared by every pose preprocessor.

Detectors produce :class:`Person` s with coordinates normalised to the detection image
(``0..1``). :func:`pose_result` turns them into OpenPose JSON in the *input's* pixels and
draws the map **from that JSON** with :func:`render_openpose`, so a host that edits the
JSON and renders it again gets exactly what the detector would have drawn.

JSON (the layout sd-webui-controlnet and ComfyUI exchange)::

    {"people": [{"pose_keypoints_2d": [x, y, c, ...],        # 18 COCO body points
                 "hand_left_keypoints_2d": [...] | None,      # 21 points
                 "hand_right_keypoints_2d": [...] | None,     # 21 points
                 "face_keypoints_2d": [...] | None}],         # 70 points (68 + 2 pupils)
     "canvas_width": W, "canvas_height": H, "line_scale": 1.0}

``c`` is 1.0 for a drawn point and 0.0 for a missing one (decoders in sd-webui-controlnet
drop points with ``c < 1``). ctrlgen writes pixel coordinates; :func:`render_openpose` also
reads normalised ones. ``line_scale`` is ctrlgen's: limb widths relative to OpenPose's
(4 px sticks on a 512 px canvas); without it they scale with the canvas' short side / 512.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

import numpy as np

from ctrlgen.core.errors import CtrlgenError
from ctrlgen.core.plugins.specs import PreprocessResult

Point = tuple[float, float] | None

BODY_NAMES = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
              "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
              "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear")
BODY_POINTS, HAND_POINTS, FACE_POINTS = 18, 21, 70
# BODY_25 (OpenPose's default model) -> the 18-point COCO layout ControlNet was trained on.
_BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

BODY_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
              (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
BODY_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
               (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
               (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = tuple((0 if i % 4 == 0 else i, i + 1) for i in range(20))
_JSON_PARTS = (("pose_keypoints_2d", "body"), ("hand_left_keypoints_2d", "left_hand"),
               ("hand_right_keypoints_2d", "right_hand"), ("face_keypoints_2d", "face"))


class PoseJSONError(CtrlgenError, ValueError):
    """OpenPose JSON that cannot be rendered; the message names the offending entry."""


@dataclass
class Person:
    """One person's keypoints, ``(x, y)`` in ``0..1`` of the image or None when not found."""

    body: list[Point]
    left_hand: list[Point] | None = None
    right_hand: list[Point] | None = None
    face: list[Point] | None = None


def _hand_color(index: int) -> tuple[float, float, float]:
    # matplotlib.colors.hsv_to_rgb([index / 20, 1, 1]) * 255, the colours controlnet-aux draws with
    import colorsys

    return tuple(c * 255.0 for c in colorsys.hsv_to_rgb(index / float(len(HAND_EDGES)), 1.0, 1.0))


HAND_COLORS = tuple(_hand_color(i) for i in range(len(HAND_EDGES)))


def line_scale_for(width: int, height: int, detect_width: int, detect_height: int) -> float:
    """How much thicker than OpenPose's lines to draw on a ``width``×``height`` map.

    OpenPose draws 4 px limbs on the detection canvas and controlnet-aux resizes that map
    to the output; ctrlgen draws on the output directly with limbs scaled the same way.
    """
    return min(width, height) / float(min(detect_width, detect_height))


def _thickness(base: int, scale: float) -> int:
    return max(1, int(round(base * scale)))


def _draw_body(canvas: np.ndarray, points: Sequence[Point], scale: float) -> None:
    import cv2

    stick, radius = _thickness(4, scale), _thickness(4, scale)
    for (a, b), color in zip(BODY_LIMBS, BODY_COLORS, strict=False):
        if points[a] is None or points[b] is None:
            continue
        ys = np.array([points[a][0], points[b][0]])
        xs = np.array([points[a][1], points[b][1]])
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(xs[0] - xs[1], ys[0] - ys[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(ys)), int(np.mean(xs))), (int(length / 2), stick),
                                   int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color])
    for point, color in zip(points, BODY_COLORS, strict=False):
        if point is not None:
            cv2.circle(canvas, (int(point[0]), int(point[1])), radius, color, thickness=-1)


def _draw_hand(canvas: np.ndarray, points: Sequence[Point], scale: float) -> None:
    import cv2

    # Points on row/column 0 are OpenPose's "not found" marker: never drawn (as upstream).
    pixels = [None if p is None or int(p[0]) < 1 or int(p[1]) < 1 else (int(p[0]), int(p[1])) for p in points]
    for (a, b), color in zip(HAND_EDGES, HAND_COLORS, strict=True):
        if pixels[a] is not None and pixels[b] is not None:
            cv2.line(canvas, pixels[a], pixels[b], color, thickness=_thickness(2, scale))
    for pixel in pixels:
        if pixel is not None:
            cv2.circle(canvas, pixel, _thickness(4, scale), (0, 0, 255), thickness=-1)


def _draw_face(canvas: np.ndarray, points: Sequence[Point], scale: float) -> None:
    import cv2

    for point in points:
        if point is not None and int(point[0]) >= 1 and int(point[1]) >= 1:
            cv2.circle(canvas, (int(point[0]), int(point[1])), _thickness(3, scale), (255, 255, 255), -1)


def draw_people(people: Sequence[Person], width: int, height: int, scale: float, *,
                body: bool = True, hands: bool = True, face: bool = True) -> np.ndarray:
    """Draw ``people`` (coordinates already in output pixels) on a black ``uint8`` canvas."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for person in people:  # per person: body, left hand, right hand, face (controlnet-aux's order)
        if body:
            _draw_body(canvas, person.body, scale)
        if hands:
            for hand in (person.left_hand, person.right_hand):
                if hand:
                    _draw_hand(canvas, hand, scale)
        if face and person.face:
            _draw_face(canvas, person.face, scale)
    return canvas


def _flatten(points: Sequence[Point] | None, width: int, height: int) -> list[float] | None:
    if points is None:
        return None
    return [v for p in points for v in ((0.0, 0.0, 0.0) if p is None else
                                        (float(p[0]) * width, float(p[1]) * height, 1.0))]


def to_openpose_json(people: Sequence[Person], width: int, height: int, line_scale: float, *,
                     body: bool = True, hands: bool = True, face: bool = True) -> dict[str, Any]:
    """OpenPose JSON in ``width``×``height`` pixels holding the parts that are drawn."""
    result = []
    for person in people:
        result.append({
            "pose_keypoints_2d": _flatten(person.body if body else [None] * BODY_POINTS, width, height),
            "face_keypoints_2d": _flatten(person.face if face else None, width, height),
            "hand_left_keypoints_2d": _flatten(person.left_hand if hands else None, width, height),
            "hand_right_keypoints_2d": _flatten(person.right_hand if hands else None, width, height),
        })
    return {"people": result, "canvas_width": int(width), "canvas_height": int(height),
            "line_scale": float(line_scale)}


def pose_result(people: Sequence[Person], width: int, height: int, line_scale: float, *,
                body: bool = True, hands: bool = True, face: bool = True) -> PreprocessResult:
    """The preprocessor result: the map is :func:`render_openpose` of the returned JSON."""
    pose_json = to_openpose_json(people, width, height, line_scale, body=body, hands=hands, face=face)
    return PreprocessResult(render_openpose(pose_json, coordinates="pixels"), pose_json)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise PoseJSONError(f"{where} is {value!r}; keypoint values must be finite numbers")
    return float(value)


def _canvas_size(pose_json: Mapping[str, Any], key: str, given: int | None) -> int | None:
    value = pose_json.get(key)
    if value is None:
        return given
    if isinstance(value, bool) or not isinstance(value, Real) or not 1 <= value <= 16384:
        raise PoseJSONError(f"{key}={value!r} is not a size in pixels (a whole number from 1 to 16384)")
    return int(value)


def _parse_part(values: Any, where: str, lengths: tuple[int, ...]) -> list[tuple[float, float, float]] | None:
    if values is None or (isinstance(values, list) and not values):
        return None
    if not isinstance(values, (list, tuple)):
        raise PoseJSONError(f"{where} must be a list [x1, y1, c1, x2, ...] or null, not {type(values).__name__}")
    if len(values) % 3 or len(values) // 3 not in lengths:
        expected = " or ".join(f"{n} points ({3 * n} numbers)" for n in lengths)
        raise PoseJSONError(f"{where} has {len(values)} numbers; expected {expected} as x, y, confidence")
    numbers = [_number(v, f"{where}[{i}]") for i, v in enumerate(values)]
    return [(numbers[i], numbers[i + 1], numbers[i + 2]) for i in range(0, len(numbers), 3)]


def parse_openpose_json(pose_json: Any) -> list[dict[str, list[tuple[float, float, float]] | None]]:
    """Validate OpenPose JSON (dict or JSON text); its people as ``{part: [(x, y, c)] | None}``."""
    if not isinstance(pose_json, Mapping):
        raise PoseJSONError(f"pose JSON must be an object with 'people', not {type(pose_json).__name__}")
    people = pose_json.get("people", [])
    if not isinstance(people, list):
        raise PoseJSONError(f"'people' must be a list of people, not {type(people).__name__}")
    lengths = {"body": (BODY_POINTS, 25), "left_hand": (HAND_POINTS,), "right_hand": (HAND_POINTS,),
               "face": (FACE_POINTS, 68)}
    parsed = []
    for index, person in enumerate(people):
        if not isinstance(person, Mapping):
            raise PoseJSONError(f"people[{index}] must be an object, not {type(person).__name__}")
        entry = {part: _parse_part(person.get(key), f"people[{index}].{key}", lengths[part])
                 for key, part in _JSON_PARTS}
        if entry["body"] is not None and len(entry["body"]) == 25:
            entry["body"] = [entry["body"][i] for i in _BODY25_TO_COCO18]
        parsed.append(entry)
    return parsed


def render_openpose(pose_json: Mapping[str, Any] | str, width: int | None = None, height: int | None = None,
                    *, body: bool = True, hands: bool = True, face: bool = True,
                    line_scale: float | None = None,
                    coordinates: Literal["auto", "pixels", "normalized"] = "auto") -> np.ndarray:
    """Draw OpenPose JSON as a ControlNet openpose map (``uint8`` H×W×3, black background).

    ``width``/``height`` default to the JSON's ``canvas_width``/``canvas_height``; keypoints
    are scaled from the canvas to them. Points with confidence 0 are not drawn. Body may
    have 18 (COCO) or 25 (BODY_25) points, hands 21, face 70 or 68. ``coordinates``:
    ``"pixels"`` (canvas pixels), ``"normalized"`` (0..1), or ``"auto"`` (normalised when
    no point lies beyond 1). ``line_scale`` overrides the limb width (1.0 = OpenPose's 4 px).
    """
    import json

    if isinstance(pose_json, (str, bytes)):
        try:
            pose_json = json.loads(pose_json)
        except ValueError as exc:
            raise PoseJSONError(f"pose JSON text is not valid JSON: {exc}") from None
    if coordinates not in ("auto", "pixels", "normalized"):
        raise PoseJSONError(f"coordinates={coordinates!r} is not one of 'auto', 'pixels', 'normalized'")
    parsed = parse_openpose_json(pose_json)
    canvas_w = _canvas_size(pose_json, "canvas_width", width)
    canvas_h = _canvas_size(pose_json, "canvas_height", height)
    if canvas_w is None or canvas_h is None:
        raise PoseJSONError("pose JSON has no canvas_width/canvas_height; pass width and height to render it")
    out_w, out_h = int(width or canvas_w), int(height or canvas_h)
    if not (1 <= out_w <= 16384 and 1 <= out_h <= 16384):
        raise PoseJSONError(f"cannot render at {out_w}×{out_h}; give a width and height from 1 to 16384")
    present = [v for person in parsed for part in person.values() if part for x, y, c in part if c > 0
               for v in (x, y)]
    normalized = coordinates == "normalized" or (coordinates == "auto" and bool(present) and max(present) <= 1.0)
    sx, sy = (float(out_w), float(out_h)) if normalized else (out_w / canvas_w, out_h / canvas_h)
    if line_scale is None:
        stored = pose_json.get("line_scale")
        if stored is not None:
            line_scale = _number(stored, "line_scale") * min(out_w, out_h) / min(canvas_w, canvas_h)
        else:
            line_scale = min(out_w, out_h) / 512.0
    elif not (math.isfinite(line_scale) and line_scale > 0):
        raise PoseJSONError(f"line_scale={line_scale!r} must be a positive number")

    def scaled(part):
        return None if part is None else [(x * sx, y * sy) if c > 0 else None for x, y, c in part]

    people = [Person(body=scaled(p["body"]) or [None] * BODY_POINTS, left_hand=scaled(p["left_hand"]),
                     right_hand=scaled(p["right_hand"]), face=scaled(p["face"])) for p in parsed]
    return draw_people(people, out_w, out_h, line_scale, body=body, hands=hands, face=face)
