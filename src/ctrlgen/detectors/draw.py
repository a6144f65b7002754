"""Detections drawn on an image: masks tinted, boxes outlined with label and score, keypoints as dots."""

from __future__ import annotations

import numpy as np

from ctrlgen.core.plugins.specs import Detection

COLORS = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 96, 255), (255, 160, 64))


def draw_detections(image: np.ndarray, detections: list[Detection]) -> np.ndarray:
    """A copy of the RGB ``image`` with each detection drawn in its own colour."""
    import cv2

    canvas = np.ascontiguousarray(image.copy())
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for index, detection in enumerate(detections):
        color = COLORS[index % len(COLORS)]
        if detection.mask is not None:
            inside = detection.mask > 127
            canvas[inside] = (0.55 * canvas[inside] + 0.45 * np.array(color)).astype(np.uint8)
        x0, y0, x1, y1 = (int(round(v)) for v in detection.box)
        cv2.rectangle(canvas, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), color, thickness)
        cv2.putText(canvas, f"{index}:{detection.label} {detection.confidence:.2f}", (x0 + 2, max(y0 - 4, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, color, thickness, cv2.LINE_AA)
        if detection.keypoints is not None:
            for x, y in np.asarray(detection.keypoints)[:, :2]:
                cv2.circle(canvas, (int(round(x)), int(round(y))), thickness + 1, color, -1)
    return canvas
