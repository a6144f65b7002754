"""Cheap progress previews: latents to RGB without running the VAE.

A Stable Diffusion latent pixel is close to a linear function of the colour of the 8×8
image patch it encodes, so one 4×3 matrix (fitted once per latent space, the way
ComfyUI's and A1111's "approx NN/cheap" previews work) gives a recognisable thumbnail in
well under a millisecond — no VAE decode, no extra GPU memory. The factors below are the
widely used least-squares fits for the released SD1.5/SD2 and SDXL VAEs; other latent
spaces bring theirs in their :class:`~ctrlgen.core.plugins.specs.ArchitectureSpec` (``latent_rgb``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# latent space -> (4×3 factors, 3 biases): rgb = latent @ factors + bias, in [-1, 1].
LATENT_RGB: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]] = {
    "sd": (
        ((0.3512, 0.2297, 0.3227),
         (0.3250, 0.4974, 0.2350),
         (-0.2829, 0.1762, 0.2721),
         (-0.2120, -0.2616, -0.7177)),
        (0.0, 0.0, 0.0),
    ),
    "sdxl": (
        ((0.3651, 0.4232, 0.4341),
         (-0.2533, -0.0042, 0.1068),
         (0.1076, 0.1111, -0.0362),
         (-0.3165, -0.2492, -0.2188)),
        (0.1084, -0.0175, -0.0011),
    ),
}

PREVIEW_SIDE = 256  # longest side of a preview image


def latents_to_rgb(latents: Any, latent_rgb: tuple, max_side: int = PREVIEW_SIDE) -> np.ndarray:
    """The first latent of a batch as a small ``uint8`` H×W×3 RGB preview.

    ``latents`` is a torch tensor or array shaped (B, C, h, w) or (C, h, w); ``latent_rgb`` is
    ``(factors, bias)``: C rows of 3 factors and 3 biases (an architecture's ``latent_rgb``).
    The preview is the latent grid upscaled to at most ``max_side`` on its longest side
    (nearest-neighbour: a preview, not a result).
    """
    factors, bias = (np.asarray(part, np.float32) for part in latent_rgb)
    array = latents.detach().float().cpu().numpy() if hasattr(latents, "detach") else np.asarray(latents)
    if array.ndim == 4:
        array = array[0]
    if array.ndim != 3 or array.shape[0] != factors.shape[0]:
        raise ValueError(f"latents of shape {tuple(array.shape)} do not have the {factors.shape[0]} channels "
                         "the preview factors are for")
    rgb = np.tensordot(array.astype(np.float32), factors, axes=([0], [0])) + bias
    pixels = ((np.clip(rgb, -1.0, 1.0) + 1.0) * 127.5 + 0.5).astype(np.uint8)
    height, width = pixels.shape[:2]
    scale = max(1, max_side // max(height, width))
    if scale > 1:
        pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
    return np.ascontiguousarray(pixels)
