"""``hand_openpose`` and ``hand_depth``: a hand's structure as ControlNet maps, from 21 landmarks.

The maps are drawn from mediapipe's 21 hand landmarks (x, y in pixels; z mediapipe's relative
depth in the same unit, negative = nearer the camera). mediapipe's 21-point layout is
OpenPose's hand layout, so the skeleton is drawn with OpenPose's own hand drawing
(:mod:`ctrlgen.preprocessors.pose.openpose_json`). The depth-like map renders each bone as a
tapered tube of discs whose brightness follows the landmarks' z (near = bright), composited
as a z-buffer (the nearest surface wins), with the palm as a polygon at its joints' depth.

``template_hand`` is the "depth library" fix: a canonical open hand (five separated fingers)
fitted to a detected hand's wrist, middle-finger knuckle and thumb side, whose depth map
replaces the detected (perhaps malformed) hand's.

Used by the fix pass's ``hand_structure`` (``core/engine/detail.py`` reaches them through the
preprocessor registry with ``keypoints``) and on their own as preprocessors: without
``keypoints`` they find the hands with the ``mediapipe_hands`` detector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ctrlgen.core.errors import ParamError
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec, PreprocessResult
from ctrlgen.preprocessors.pose.openpose_json import HAND_EDGES, HAND_POINTS, _draw_hand

WRIST, MIDDLE_KNUCKLE, INDEX_KNUCKLE, PINKY_KNUCKLE = 0, 9, 5, 17
PALM = (0, 1, 5, 9, 13, 17)  # wrist, thumb base and the four knuckles: the palm's outline
NEAR, FAR = 255, 96  # the depth map's brightness at a hand's nearest and farthest landmark

# A canonical open right hand, palm to the camera, in units of the wrist -> middle-knuckle length:
# x across the hand (thumb at negative x), y along the middle finger, z depth (negative = near).
TEMPLATE_HAND = np.array([
    (0.00, 0.00, 0.00),                                                              # wrist
    (-0.35, 0.25, -0.02), (-0.62, 0.45, -0.05), (-0.82, 0.66, -0.07), (-0.98, 0.86, -0.08),  # thumb
    (-0.30, 0.95, 0.00), (-0.38, 1.35, 0.02), (-0.43, 1.60, 0.04), (-0.47, 1.82, 0.06),      # index
    (0.00, 1.00, 0.00), (0.00, 1.45, 0.02), (0.00, 1.73, 0.04), (0.00, 1.96, 0.06),          # middle
    (0.26, 0.95, 0.01), (0.31, 1.35, 0.03), (0.35, 1.60, 0.05), (0.38, 1.80, 0.07),          # ring
    (0.48, 0.85, 0.02), (0.61, 1.15, 0.04), (0.69, 1.33, 0.06), (0.76, 1.50, 0.08),          # pinky
], np.float32)


def as_hands(keypoints: Any, owner: str = "keypoints") -> list[np.ndarray]:
    """``keypoints`` (one hand of 21 points or a list of hands; points ``[x, y]`` or ``[x, y, z]``
    in pixels) as float32 arrays of shape 21×3 (z = 0 where not given)."""
    array = np.asarray(keypoints, dtype=np.float32) if len(keypoints) else np.zeros((0, HAND_POINTS, 3), np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1] != HAND_POINTS or array.shape[2] not in (2, 3):
        raise ParamError(f"{owner}: a hand is {HAND_POINTS} points [x, y] or [x, y, z] in pixels (mediapipe's "
                         f"hand landmarks); got an array of shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ParamError(f"{owner}: the landmarks hold NaN or infinite values; give finite pixel coordinates")
    if array.shape[2] == 2:
        array = np.concatenate([array, np.zeros(array.shape[:2] + (1,), np.float32)], axis=2)
    return list(array)


def palm_length(hand: np.ndarray) -> float:
    """The wrist -> middle-knuckle distance in pixels (the hand's scale)."""
    return float(np.hypot(*(hand[MIDDLE_KNUCKLE, :2] - hand[WRIST, :2])))


def template_hand(hand: np.ndarray) -> np.ndarray:
    """:data:`TEMPLATE_HAND` fitted to ``hand`` (21×3): its wrist, the direction and length of
    wrist -> middle knuckle, and the thumb on the side of the detected index knuckle."""
    wrist = hand[WRIST, :2]
    along = hand[MIDDLE_KNUCKLE, :2] - wrist
    length = float(np.hypot(*along))
    if length < 1e-3:
        raise ParamError("template hand: the wrist and middle-finger knuckle coincide; the hand cannot be oriented "
                         "(use hand_structure 'depth' or 'openpose' for this detection)")
    across = np.array([-along[1], along[0]], np.float32)  # along turned 90°, same length
    thumb_side = float(np.dot(hand[INDEX_KNUCKLE, :2] - hand[PINKY_KNUCKLE, :2], across))
    mirror = -1.0 if thumb_side > 0 else 1.0  # the template's thumb is at negative x
    fitted = np.empty((HAND_POINTS, 3), np.float32)
    fitted[:, :2] = wrist + TEMPLATE_HAND[:, 1:2] * along + mirror * TEMPLATE_HAND[:, 0:1] * across
    fitted[:, 2] = hand[WRIST, 2] + TEMPLATE_HAND[:, 2] * length
    return fitted


def draw_hand_openpose(hands: Sequence[np.ndarray], width: int, height: int,
                       line_scale: float | None = None) -> np.ndarray:
    """OpenPose's hand skeleton of each hand on a black ``width``×``height`` RGB map. Lines are
    OpenPose's 2 px (joints 4 px) times ``line_scale`` (default: a tenth of the hand's size,
    so a small hand in a big picture is not one blob)."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for hand in hands:
        scale = line_scale if line_scale is not None else max(0.25, palm_length(hand) / 60.0)
        _draw_hand(canvas, [(float(x), float(y)) for x, y in hand[:, :2]], scale)
    return canvas


def draw_hand_depth(hands: Sequence[np.ndarray], width: int, height: int) -> np.ndarray:
    """A depth-like RGB map of each hand (grey, near = bright, background black): fingers as
    tapered tubes, the palm as a polygon, shaded by the landmarks' z from :data:`NEAR` (nearest
    landmark) to :data:`FAR` (farthest), the nearest surface winning where they overlap."""
    import cv2

    depth = np.zeros((height, width), np.uint8)
    for hand in hands:
        length = max(1.0, palm_length(hand))
        z = hand[:, 2]
        spread = float(z.max() - z.min())
        shade = (np.full(HAND_POINTS, (NEAR + FAR) / 2.0) if spread < 1e-6
                 else FAR + (NEAR - FAR) * (z.max() - z) / spread)
        # Draw in a window around the hand (discs are cheap there), then into the map.
        margin = int(math.ceil(0.2 * length)) + 2
        x0 = max(0, int(math.floor(hand[:, 0].min())) - margin)
        y0 = max(0, int(math.floor(hand[:, 1].min())) - margin)
        x1 = min(width, int(math.ceil(hand[:, 0].max())) + margin + 1)
        y1 = min(height, int(math.ceil(hand[:, 1].max())) + margin + 1)
        if x1 <= x0 or y1 <= y0:
            continue  # wholly outside the map
        hand = hand - np.array([x0, y0, 0], np.float32)
        layer = np.zeros((y1 - y0, x1 - x0), np.uint8)
        palm = np.round(hand[list(PALM), :2]).astype(np.int32)
        cv2.fillPoly(layer, [palm], int(round(float(shade[list(PALM)].mean()))), lineType=cv2.LINE_AA)
        for a, b in HAND_EDGES:
            finger = (b - 1) // 4  # 0 = thumb
            base_radius = length * (0.16 if finger == 0 else 0.12 if finger < 4 else 0.10)
            joint = (b - 1) % 4  # 0 = the bone from the wrist/knuckle, 3 = the fingertip's
            r0, r1 = base_radius * (1 - 0.12 * joint), base_radius * (1 - 0.12 * (joint + 1))
            p0, p1 = hand[a, :2], hand[b, :2]
            count = max(2, int(math.ceil(float(np.hypot(*(p1 - p0))) / max(1.0, min(r0, r1) / 2))) + 1)
            for t in np.linspace(0.0, 1.0, count):
                centre = p0 + t * (p1 - p0)
                value = int(round(shade[a] + t * (shade[b] - shade[a])))
                disc = np.zeros_like(layer)
                cv2.circle(disc, (int(round(centre[0])), int(round(centre[1]))),
                           max(1, int(round(r0 + t * (r1 - r0)))), value, thickness=-1, lineType=cv2.LINE_AA)
                np.maximum(layer, disc, out=layer)
        np.maximum(depth[y0:y1, x0:x1], layer, out=depth[y0:y1, x0:x1])
    return np.repeat(depth[..., None], 3, axis=2)


def render(kind: str, hands: Sequence[np.ndarray], width: int, height: int, template: bool = False) -> np.ndarray:
    """``kind`` (``openpose`` or ``depth``) of ``hands`` (21×3 each), the template hand fitted
    to each instead where ``template``."""
    if template:
        hands = [template_hand(hand) for hand in hands]
    if kind == "openpose":
        return draw_hand_openpose(hands, width, height)
    if kind == "depth":
        return draw_hand_depth(hands, width, height)
    raise ParamError(f"hand map kind {kind!r} is unknown; use 'openpose' or 'depth'")


def _hands_of(image: np.ndarray, keypoints: Any, confidence: float, max_hands: int) -> list[np.ndarray]:
    if keypoints:
        return as_hands(keypoints)
    from ctrlgen.core.engine.detect import detect

    found = detect("mediapipe_hands", image, confidence=confidence, max_hands=max_hands)
    return [np.asarray(d.keypoints, np.float32) for d in found if d.keypoints is not None]


def _runner(kind: str):
    def run(image: np.ndarray, mask: np.ndarray | None = None, *, keypoints: Any, template: bool,
            confidence: float, max_hands: int) -> PreprocessResult:
        height, width = image.shape[:2]
        hands = _hands_of(image, keypoints, confidence, max_hands)
        drawn = [template_hand(hand) for hand in hands] if template else hands
        return PreprocessResult(render(kind, drawn, width, height),
                                {"hands": [hand.round(2).tolist() for hand in drawn]})

    return run


PARAMS = (
    Param("keypoints", "json", default=[],
          description="Hands to draw: lists of 21 [x, y, z] pixel landmarks (mediapipe's layout); empty: find "
                      "them with the mediapipe_hands detector"),
    Param("template", "bool", default=False,
          description="Draw a canonical open hand fitted to each hand's wrist, middle knuckle and thumb side "
                      "instead of its landmarks (the depth-library hand fix)"),
    Param("confidence", "float", default=0.3, min=0.01, max=1.0, step=0.01,
          description="mediapipe_hands' detection confidence (without keypoints)"),
    Param("max_hands", "int", default=10, min=1, max=50, step=1, description="Most hands to find (without keypoints)"),
)


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name="hand_openpose", run=_runner("openpose"), params=PARAMS, family="openpose",
        description="OpenPose hand skeleton from 21 hand landmarks (given, or mediapipe Hands); the landmarks "
                    "in the result data", requires=("cv2",))
    yield PreprocessorSpec(
        name="hand_depth", run=_runner("depth"), params=PARAMS, family="depth",
        description="Depth-like hand map from mediapipe's 3-D hand landmarks (near = bright), or a template "
                    "open hand fitted to each hand", requires=("cv2",))
