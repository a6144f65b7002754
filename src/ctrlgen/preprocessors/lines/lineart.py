"""Line art: white lines on black (as sd-webui-controlnet feeds the lineart ControlNets).

- ``lineart_realistic`` / ``lineart_coarse``: the "informative drawings" generators
  (``sk_model.pth`` / ``sk_model2.pth``);
- ``lineart_anime``: the anime U-Net (``netG.pth``);
- ``lineart_anime_denoise``: manga line extraction (``erika.pth``), sd-webui-controlnet's
  choice for this name, which ignores screentones and noise;
- ``lineart_standard``: no weights; how much darker each pixel is than its blurred
  surroundings, normalised by the median line strength (controlnet_aux's algorithm).

``invert`` gives black lines on white, for models and hosts that expect a sketch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION
from ctrlgen.core.models.annotators import unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec, WeightFile
from ctrlgen.preprocessors.lines.common import (
    INVERT,
    NETWORK_REQUIRES,
    annotator_weight,
    detector_input,
    load_network,
    network_owner,
    output_map,
    tensor_device,
)

PARAMS = (INVERT, DETECT_RESOLUTION)
STANDARD_PARAMS = (
    Param("gaussian_sigma", "float", default=6.0, min=0.1, max=100.0, step=0.1,
          description="Blur radius (sigma, detector pixels) of the surroundings a pixel is compared to"),
    Param("intensity_threshold", "int", default=8, min=0, max=255, step=1,
          description="Darkness differences up to this are noise, left out of the line-strength median"),
    INVERT,
    replace(DETECT_RESOLUTION, description=DETECT_RESOLUTION.description + "; the blur is in its pixels"),
)


def _informative_drawings(state):
    from controlnet_aux.lineart import Generator

    return Generator(3, 1, 3)


def _anime_unet(state):
    import functools

    from controlnet_aux.lineart_anime import UnetGenerator
    from torch import nn

    width = int(state["model.model.0.weight"].shape[0])  # 64 in netG.pth
    norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return UnetGenerator(3, 1, 8, width, norm_layer=norm, use_dropout=False)


def _manga_line(state):
    from ctrlgen.preprocessors.lines.manga import build_manga_line_network

    return build_manga_line_network(state)


def informative_lines(network, work: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        batch = (torch.from_numpy(work).float() / 255.0).permute(2, 0, 1)[None].to(tensor_device(network))
        sketch = network(batch)[0, 0].float().cpu().numpy()
    return 255 - (sketch * 255.0).clip(0, 255).astype(np.uint8)


def anime_lines(network, work: np.ndarray) -> np.ndarray:
    import cv2
    import torch

    height, width = work.shape[:2]
    # Eight stride-2 levels: the U-Net runs on sides rounded up to multiples of 256.
    padded = cv2.resize(work, (256 * -(-width // 256), 256 * -(-height // 256)), interpolation=cv2.INTER_CUBIC)
    with torch.inference_mode():
        batch = (torch.from_numpy(padded).float() / 127.5 - 1.0).permute(2, 0, 1)[None]
        sketch = network(batch.to(tensor_device(network)))[0, 0] * 127.5 + 127.5
        sketch = sketch.float().cpu().numpy()
    sketch = cv2.resize(sketch, (width, height), interpolation=cv2.INTER_CUBIC)
    return 255 - sketch.clip(0, 255).astype(np.uint8)


def manga_lines(network, work: np.ndarray) -> np.ndarray:
    import cv2
    import torch

    grey = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY)  # the network takes 0..255 grey, unnormalised
    with torch.inference_mode():
        sketch = network(torch.from_numpy(grey).float()[None, None].to(tensor_device(network)))
        sketch = sketch.float().cpu().numpy()[0, 0]
    return (255 - sketch).clip(0, 255).astype(np.uint8)


NETWORK_VARIANTS = (
    # name, weight file, network builder, inference, description
    ("lineart_realistic", "sk_model.pth", _informative_drawings, informative_lines,
     "Line art of a photo, detailed (informative drawings network, sk_model.pth)"),
    ("lineart_coarse", "sk_model2.pth", _informative_drawings, informative_lines,
     "Line art of a photo, coarse strokes (informative drawings network, sk_model2.pth)"),
    ("lineart_anime", "netG.pth", _anime_unet, anime_lines,
     "Line art of anime-style pictures (anime U-Net, netG.pth)"),
    ("lineart_anime_denoise", "erika.pth", _manga_line, manga_lines,
     "Clean anime/manga line art ignoring screentones and noise (manga line extraction, erika.pth)"),
)


def make_run(owner: str, weight: WeightFile, build: Callable, lines: Callable) -> Callable[..., np.ndarray]:
    def run(image: np.ndarray, mask: np.ndarray | None = None, *, invert: bool,
            detect_resolution: int) -> np.ndarray:
        network = load_network(owner, weight, build)
        height, width = image.shape[:2]
        work = detector_input(image, detect_resolution, network=True)
        return output_map(lines(network, work), width, height, invert=invert)

    run.__name__ = f"run_{owner}"
    return run


def standard_lines(work: np.ndarray, gaussian_sigma: float, intensity_threshold: int) -> np.ndarray:
    import cv2

    pixels = work.astype(np.float32)
    darker = np.min(cv2.GaussianBlur(pixels, (0, 0), gaussian_sigma) - pixels, axis=2).clip(0, 255)
    strong = darker[darker > intensity_threshold]
    # Normalise so the typical line is mid-grey; a picture without lines is not amplified.
    typical = float(np.median(strong)) if strong.size else 0.0
    return (darker / max(16.0, typical) * 127).clip(0, 255).astype(np.uint8)


def run_lineart_standard(image: np.ndarray, mask: np.ndarray | None = None, *, gaussian_sigma: float,
                         intensity_threshold: int, invert: bool, detect_resolution: int) -> np.ndarray:
    height, width = image.shape[:2]
    lines = standard_lines(detector_input(image, detect_resolution), gaussian_sigma, intensity_threshold)
    return output_map(lines, width, height, invert=invert)


@hookimpl
def ctrlgen_preprocessors():
    for name, filename, build, lines, description in NETWORK_VARIANTS:
        weight = annotator_weight(filename)
        yield PreprocessorSpec(
            name=name,
            run=make_run(name, weight, build, lines),
            params=PARAMS,
            family="lineart",
            description=description,
            weights=(weight,),
            requires=NETWORK_REQUIRES,
            unload=unloader(network_owner(weight)),
        )
    yield PreprocessorSpec(
        name="lineart_standard",
        run=run_lineart_standard,
        params=STANDARD_PARAMS,
        family="lineart",
        description="Line art from a difference of Gaussians, normalised (no weights)",
        requires=("cv2",),
    )
