"""Content shuffle: the image's pieces moved around by a smooth random flow (ControlNet shuffle).

The algorithm is controlnet_aux's ``ContentShuffleDetector`` (sd-webui-controlnet's
``shuffle``): two low-frequency noise fields, upsampled with bicubic interpolation, give
every pixel a source position, and ``cv2.remap`` pulls the picture through them. Upstream
draws the noise from numpy's global random state; here a ``seed`` param makes it
repeatable (seed ``s`` gives what upstream gives after ``np.random.seed(s)``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION, detection_size, resize
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec, PreprocessResult

MAX_SEED = 2**31 - 1

PARAMS = (
    replace(DETECT_RESOLUTION, default=512),
    Param("seed", "int", default=0, min=-1, max=MAX_SEED, step=1,
          description="Seed of the random flow: the same seed gives the same map; -1 draws a new one "
                      "(the seed used is returned in the data)"),
    Param("cell_size", "int", default=256, min=8, max=4096, step=8,
          description="Spacing in pixels of the random displacement field (upstream's f); "
                      "smaller cuts the picture into smaller pieces"),
)


def noise_disk(rng: np.random.RandomState, height: int, width: int, channels: int, cell: int) -> np.ndarray:
    """controlnet_aux's ``make_noise_disk`` with an explicit random state: smooth noise in [0, 1]."""
    import cv2

    noise = rng.uniform(low=0, high=1, size=((height // cell) + 2, (width // cell) + 2, channels))
    noise = cv2.resize(noise, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell : cell + height, cell : cell + width]
    noise -= np.min(noise)
    noise /= max(float(np.max(noise)), 1e-12)  # upstream divides by the max; a 1-pixel field has 0
    if channels == 1:
        noise = noise[:, :, None]
    return noise


def run_shuffle(
    image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int, seed: int, cell_size: int
) -> PreprocessResult:
    import cv2

    if seed < 0:
        seed = int(np.random.default_rng().integers(0, MAX_SEED))
    height, width = image.shape[:2]
    work = resize(image, *detection_size(width, height, detect_resolution, multiple=1))
    work_h, work_w = work.shape[:2]
    rng = np.random.RandomState(seed)
    flow_x = noise_disk(rng, work_h, work_w, 1, cell_size) * float(work_w - 1)
    flow_y = noise_disk(rng, work_h, work_w, 1, cell_size) * float(work_h - 1)
    flow = np.concatenate([flow_x, flow_y], axis=2).astype(np.float32)
    shuffled = cv2.remap(work, flow, None, cv2.INTER_LINEAR)
    return PreprocessResult(resize(shuffled, width, height), {"seed": seed})


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name="shuffle",
        run=run_shuffle,
        params=PARAMS,
        family="shuffle",
        description="Content shuffle: the picture's pieces rearranged by a smooth random flow (no weights)",
        requires=("cv2",),
    )
