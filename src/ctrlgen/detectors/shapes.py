"""Masks from landmarks and boxes from masks, shared by the detectors."""

from __future__ import annotations

import numpy as np


def box_of_mask(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) around a mask's non-zero pixels, or None."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def polygon_mask(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """A ``uint8`` H×W mask, 255 inside the polygon through ``points`` (pixels, in order)."""
    import cv2

    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(points)[:, :2]).astype(np.int32)], 255)
    return mask


def hull_mask(points: np.ndarray, width: int, height: int, grow_px: int = 0) -> np.ndarray:
    """A ``uint8`` H×W mask of the convex hull of ``points`` (pixels), grown by ``grow_px``."""
    import cv2

    hull = cv2.convexHull(np.round(np.asarray(points)[:, :2]).astype(np.int32))
    mask = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(mask, hull, 255)
    if grow_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow_px + 1, 2 * grow_px + 1))
        mask = cv2.dilate(mask, kernel)
    return mask


def outline_order(edges) -> list[int]:
    """The landmark indices of a closed outline given as a set of ``(a, b)`` edges, in order
    (MediaPipe's ``FACEMESH_FACE_OVAL`` is such a set)."""
    neighbours: dict[int, list[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    start = min(neighbours)
    order, previous, current = [start], None, start
    while True:
        following = [n for n in neighbours[current] if n != previous]
        if not following or following[0] == start:
            break
        previous, current = current, following[0]
        order.append(current)
    return order
