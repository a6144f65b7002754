"""Straight line segments, drawn 1 px wide in white on black (for the MLSD ControlNet).

- ``mlsd``: the M-LSD network (``mlsd_large_512_fp32.pth``), decoded as upstream's
  ``pred_lines``: segment centres with a score above ``value_threshold`` whose length
  on the network's half-resolution output grid exceeds ``distance_threshold``.
- ``mlsd_lsd``: no weights; OpenCV's line segment detector with the same two params:
  a segment's value is its contrast (the step in grey level across it, 0..1) and its
  length is measured on the same half-resolution scale.

Both return the segments as ``data["lines"]`` (``[x1, y1, x2, y2]`` in input pixels) and
their values as ``data["scores"]``.
"""

from __future__ import annotations

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION
from ctrlgen.core.models.annotators import unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec, PreprocessResult
from ctrlgen.preprocessors.lines.common import (
    NETWORK_REQUIRES,
    annotator_weight,
    detector_input,
    load_network,
    network_owner,
    output_map,
    tensor_device,
)

MLSD_WEIGHT = annotator_weight("mlsd_large_512_fp32.pth")
PARAMS = (
    Param("value_threshold", "float", default=0.1, min=0.01, max=2.0, step=0.01,
          description="Minimum segment value: M-LSD's centre score, or LSD's contrast (0..1) across it"),
    Param("distance_threshold", "float", default=0.1, min=0.01, max=20.0, step=0.01,
          description="Minimum segment length, in units of 2 detector pixels (M-LSD's output grid)"),
    DETECT_RESOLUTION,
)
TOP_CANDIDATES = 200  # segment centres M-LSD considers, as upstream
LSD_SIDE_OFFSET = 2.0  # pixels either side of a segment where LSD contrast is measured


def _mlsd_network(state):
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return MobileV2_MLSD_Large()


def mlsd_segments(network, work: np.ndarray, value_threshold: float,
                  distance_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``(segments N×4, scores N)`` in ``work``'s pixels."""
    import torch

    height, width = work.shape[:2]
    pixels = np.concatenate([work, np.ones((height, width, 1))], axis=-1)  # 4th channel as trained
    batch = torch.from_numpy(pixels.transpose(2, 0, 1)[None].astype(np.float32) / 127.5 - 1.0)
    with torch.inference_mode():
        output = network(batch.to(tensor_device(network))).float()
        heat = torch.sigmoid(output[:, 0])
        peaks = heat * (torch.nn.functional.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
        scores, indices = torch.topk(peaks.reshape(-1), min(TOP_CANDIDATES, peaks.numel()))
        grid_width = output.shape[3]
        ys, xs = (indices // grid_width).cpu().numpy(), (indices % grid_width).cpu().numpy()
        displacement = output[0, 1:5].permute(1, 2, 0).cpu().numpy()[ys, xs]  # start xy, end xy
        scores = scores.cpu().numpy()
    lengths = np.sqrt(np.sum((displacement[:, :2] - displacement[:, 2:]) ** 2, axis=-1))
    keep = (scores > value_threshold) & (lengths > distance_threshold)
    centres = np.stack([xs, ys, xs, ys], axis=1)[keep]
    return 2 * (centres + displacement[keep]).astype(np.float64), scores[keep].astype(np.float64)


def lsd_segments(work: np.ndarray, value_threshold: float,
                 distance_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV LSD segments ``(N×4, contrast N)`` filtered like M-LSD's (see module docstring)."""
    import cv2

    grey = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY)
    found = cv2.createLineSegmentDetector().detect(grey)[0]
    if found is None:
        return np.zeros((0, 4)), np.zeros(0)
    segments = found.reshape(-1, 4).astype(np.float64)
    start, end = segments[:, :2], segments[:, 2:]
    lengths = np.hypot(*(end - start).T)
    contrast = _contrast(grey, start, end, lengths)
    keep = (contrast > value_threshold) & (lengths > 2 * distance_threshold)
    return segments[keep], contrast[keep]


def _contrast(grey: np.ndarray, start: np.ndarray, end: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Grey-level step across each segment (0..1): mean on one side minus mean on the other."""
    import cv2

    if len(start) == 0:
        return np.zeros(0)
    along = np.linspace(0.1, 0.9, 16)[None, :, None]
    points = start[:, None] + along * (end - start)[:, None]  # N×16×2
    normal = np.stack([-(end - start)[:, 1], (end - start)[:, 0]], axis=1) / np.maximum(lengths, 1e-6)[:, None]
    offset = LSD_SIDE_OFFSET * normal[:, None]
    sides = []
    for sign in (1, -1):
        where = (points + sign * offset).astype(np.float32)
        sides.append(cv2.remap(grey, where[..., 0], where[..., 1], cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE).astype(np.float64).mean(axis=1))
    return np.abs(sides[0] - sides[1]) / 255.0


def draw_segments(segments: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    canvas = np.zeros((height, width), np.uint8)
    if len(segments):
        # One call draws them all: the same pixels as upstream's cv2.line per segment, which
        # truncates the end points toward zero like this cast does.
        cv2.polylines(canvas, segments.astype(np.int32).reshape(-1, 2, 2), False, 255, 1)
    return canvas


def _result(segments: np.ndarray, scores: np.ndarray, work: np.ndarray, image: np.ndarray) -> PreprocessResult:
    height, width = image.shape[:2]
    lines = draw_segments(segments, work.shape[1], work.shape[0])
    scale = np.array([width / work.shape[1], height / work.shape[0]] * 2)
    data = {"lines": np.round(segments * scale, 2).tolist(), "scores": np.round(scores, 4).tolist()}
    return PreprocessResult(output_map(lines, width, height), data)


def run_mlsd(image: np.ndarray, mask: np.ndarray | None = None, *, value_threshold: float,
             distance_threshold: float, detect_resolution: int) -> PreprocessResult:
    network = load_network("mlsd", MLSD_WEIGHT, _mlsd_network)
    work = detector_input(image, detect_resolution, network=True)
    return _result(*mlsd_segments(network, work, value_threshold, distance_threshold), work, image)


def run_mlsd_lsd(image: np.ndarray, mask: np.ndarray | None = None, *, value_threshold: float,
                 distance_threshold: float, detect_resolution: int) -> PreprocessResult:
    work = detector_input(image, detect_resolution)
    return _result(*lsd_segments(work, value_threshold, distance_threshold), work, image)


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name="mlsd",
        run=run_mlsd,
        params=PARAMS,
        family="mlsd",
        description="Straight line segments from the M-LSD network (mlsd_large_512_fp32.pth)",
        weights=(MLSD_WEIGHT,),
        requires=NETWORK_REQUIRES,
        unload=unloader(network_owner(MLSD_WEIGHT)),
    )
    yield PreprocessorSpec(
        name="mlsd_lsd",
        run=run_mlsd_lsd,
        params=PARAMS,
        family="mlsd",
        description="Straight line segments from OpenCV's line segment detector (LSD; no weights)",
        requires=("cv2",),
    )
