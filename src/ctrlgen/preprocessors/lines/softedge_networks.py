"""Soft edge networks shared by softedge and scribble: HED (ControlNet's Apache-2 HED) and PiDiNet.

Both run controlnet_aux's network classes with our weights from the model store, and
post-process exactly as controlnet_aux's ``HEDdetector`` / ``PidiNetDetector`` do.
"""

from __future__ import annotations

import numpy as np

from ctrlgen.preprocessors.lines.common import (
    annotator_weight,
    detector_input,
    load_network,
    safe_step,
    tensor_device,
)

HED_WEIGHT = annotator_weight("ControlNetHED.pth")
PIDINET_WEIGHT = annotator_weight("table5_pidinet.pth")


def _build_hed(state):
    from controlnet_aux.hed import ControlNetHED_Apache2

    return ControlNetHED_Apache2()


def _build_pidinet(state):
    from controlnet_aux.pidi.model import pidinet

    return pidinet()


def hed_edges(owner: str, image: np.ndarray, detect_resolution: int, safe: bool = False) -> np.ndarray:
    """HED soft edges (``uint8`` at the detector's size, white = edge)."""
    import cv2
    import torch

    network = load_network(owner, HED_WEIGHT, _build_hed)
    work = detector_input(image, detect_resolution, network=True)
    height, width = work.shape[:2]
    with torch.inference_mode():
        batch = torch.from_numpy(work).float().permute(2, 0, 1)[None].to(tensor_device(network))
        sides = [side.float().cpu().numpy()[0, 0] for side in network(batch)]
    sides = [cv2.resize(side, (width, height), interpolation=cv2.INTER_LINEAR) for side in sides]
    # The five side outputs are fused by their mean and a sigmoid, in float64 as upstream.
    edge = 1 / (1 + np.exp(-np.mean(np.stack(sides, axis=2), axis=2).astype(np.float64)))
    if safe:
        edge = safe_step(edge)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def pidinet_edges(owner: str, image: np.ndarray, detect_resolution: int, safe: bool = False) -> np.ndarray:
    """PiDiNet soft edges (``uint8`` at the detector's size, white = edge)."""
    import torch

    network = load_network(owner, PIDINET_WEIGHT, _build_pidinet)
    work = detector_input(image, detect_resolution, network=True)
    bgr = np.ascontiguousarray(work[:, :, ::-1])  # PiDiNet was trained on OpenCV's BGR images
    with torch.inference_mode():
        batch = (torch.from_numpy(bgr).float() / 255.0).permute(2, 0, 1)[None].to(tensor_device(network))
        edge = network(batch)[-1].float().cpu().numpy()[0, 0]
    if safe:
        edge = safe_step(edge)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)
