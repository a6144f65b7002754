"""What the depth and normal-map preprocessors share (not a plugin).

The networks are controlnet_aux's own classes (MiDaS DPT-Hybrid, ZoeDepth, LeReS and its
pix2pix merge network, BAE's NNET), built with random initialisation (no pretrained
backbone is fetched) and filled from the weight file found in the model store. The
maps are made by controlnet_aux's detector objects (``MidasDetector``, ``ZoeDetector``,
``LeresDetector``, ``NormalBaeDetector``) on an image ctrlgen has already brought to the
detector's size, so the pixels are upstream's; ctrlgen adds the size contract, the model
store and the cache. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ctrlgen.core.errors import ModelFormatError
from ctrlgen.core.images import detection_size, resize
from ctrlgen.core.models import annotators
from ctrlgen.core.plugins.specs import WeightFile

log = logging.getLogger(__name__)

ANNOTATORS = "lllyasviel/Annotators"
REQUIRES = ("torch", "controlnet_aux")

MIDAS = WeightFile("dpt_hybrid-midas-501f0c75.pt", source=ANNOTATORS)
ZOE = WeightFile("ZoeD_M12_N.pt", source=ANNOTATORS)
LERES = WeightFile("res101.pth", source=ANNOTATORS)
LERES_BOOST = WeightFile("latest_net_G.pth", source=ANNOTATORS)
NORMAL_BAE = WeightFile("scannet.pt", source=ANNOTATORS)

# Checkpoints keep their tensors under one of these (flattened by load_weights with a dot),
# often with DataParallel's "module." inside: ZoeD and scannet under "model", res101 under
# "depth_model", MiDaS bare or under "model" next to an optimizer state.
_CONTAINERS = ("model.", "state_dict.", "depth_model.")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep upstream's progress prints off stdout (it may carry ``--json`` output)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    if buffer.getvalue().strip():
        log.debug("controlnet_aux: %s", buffer.getvalue().strip())


def detector_input(image: np.ndarray, detect_resolution: int, min_long_side: int = 0) -> np.ndarray:
    """``image`` at the network's size: short side ``detect_resolution``, sides multiples of 64.

    ``detect_resolution=0`` keeps the input's scale (sides still rounded to 64, which the
    networks' strided layers need). ``min_long_side`` raises the size until the long side
    reaches it.
    """
    height, width = image.shape[:2]
    short = detect_resolution if detect_resolution > 0 else min(width, height)
    size = detection_size(width, height, short)
    while max(size) < min_long_side:
        short += 64
        size = detection_size(width, height, short)
    return resize(image, *size)


def run_detector(detector: Any, work: np.ndarray, **options: Any) -> np.ndarray:
    """controlnet_aux's ``detector`` on ``work``, an image already at its size (no resizing there)."""
    side = min(work.shape[:2])  # with sides multiples of 64, upstream's resize_image is the identity
    with quiet():
        result = detector(work, detect_resolution=side, image_resolution=side, output_type="np", **options)
    return result


def to_input_size(control_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """A detector's map (H×W or H×W×3) as ``height×width×3`` ``uint8``."""
    if control_map.ndim == 2:
        control_map = np.repeat(control_map[:, :, None], 3, axis=2)
    return np.ascontiguousarray(resize(control_map, width, height))


def fit_state(state: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    """The checkpoint's tensors under the network's names (container and ``module.`` dropped)."""
    options = [state] + [
        {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        for prefix in _CONTAINERS
    ]
    options = [{key.removeprefix("module."): value for key, value in option.items()} for option in options]
    return max(options, key=lambda option: len(expected & option.keys()))


def fill(network: Any, owner: str, weight: WeightFile, path: Any, state: dict[str, Any]) -> Any:
    """Load ``state`` into ``network``; a file that does not fit is a clear error.

    Every tensor of the network must be in the file (a partly random network would draw
    nonsense). Extra tensors are ignored, as upstream's own ``strict=False`` fallback for
    ZoeD does: a checkpoint saved with an older timm may hold buffers a newer one computes.
    """
    expected = set(network.state_dict())
    state = fit_state(state, expected)
    missing = sorted(key for key in expected - state.keys() if not key.endswith("num_batches_tracked"))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelFormatError(
            f"{owner!r}: {path} does not hold the weights it needs ({weight.filename} from "
            f"{weight.source}): {len(missing)} of the network's {len(expected)} tensors are missing "
            f"({shown}). Is it the right file?"
        )
    try:
        network.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelFormatError(
            f"{owner!r}: {path} does not fit the network of {weight.filename} "
            f"({str(exc).splitlines()[-1].strip()}); is it the right file?"
        ) from None
    return network


def load(owner: str, weight: WeightFile, build: Callable[[], Any],
         prepare: Callable[[Any], Any] | None = None) -> Any:
    """``build()``'s network filled from ``weight``, on the configured device; loaded once.

    Cached as ``depth:<file>`` (per path and device) so variants sharing a file
    (depth_midas and normal_midas, depth_leres and depth_leres++) share one copy;
    ``owner`` (the preprocessor) is named in errors. ``prepare`` adjusts the loaded network.
    """
    path = annotators.weight_path(owner, weight)
    device = annotators.torch_device()

    def loader() -> Any:
        state = annotators.load_weights(owner, weight)
        with quiet():
            network = build()
        network = fill(network, owner, weight, path, state).float().eval().requires_grad_(False)
        return (prepare(network) if prepare else network).to(device)

    return annotators.loaded(cache_owner(weight), loader, key=(str(path), device))


def cache_owner(weight: WeightFile) -> str:
    return f"depth:{weight.filename}"


def unload_files(*weights: WeightFile) -> Callable[[], None]:
    """A spec's ``unload``: frees the networks of ``weights``."""

    def unload() -> None:
        for weight in weights:
            annotators.unload(cache_owner(weight))

    return unload


# -- the upstream networks, randomly initialised (no download) --------------------------------

def build_midas() -> Any:
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    return DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)


def build_zoe() -> Any:
    from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config

    return ZoeDepth.build_from_config(get_config("zoedepth", "infer"))


def build_leres() -> Any:
    from controlnet_aux.leres.leres.multi_depth_model_woauxi import RelDepthModel

    return RelDepthModel(backbone="resnext101")


def batch_statistics(network: Any) -> Any:
    """BatchNorm layers normalising with each image's own statistics, as in training mode.

    controlnet_aux, sd-webui-controlnet and comfyui_controlnet_aux never call ``eval()`` on
    LeReS's network, so its BatchNorm layers run in training mode: the maps everyone gets
    (and ControlNet's depth models were trained on) come from per-image statistics. Dropping
    the running statistics gives the same numbers without rewriting buffers on every call.
    """
    import torch

    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    return network


def use_cached_boost_mask() -> None:
    """Make LeReS++'s blending mask a constant computed once, not on every call.

    Upstream's ``estimateboost`` starts by blurring a 3000×3000 mask with a 375-px Gaussian
    (16 s on one CPU core) whose result depends only on its size. It is computed once by
    upstream's own ``generatemask`` and kept with the merge network (freed by ``unload``);
    callers get a copy, so the maps are unchanged.
    """
    from controlnet_aux.leres.leres import depthmap

    if getattr(depthmap.generatemask, "cached_by_ctrlgen", False):
        return
    upstream = depthmap.generatemask

    def generatemask(size: tuple[int, int]) -> np.ndarray:
        key = ("mask", tuple(size))
        return annotators.loaded(cache_owner(LERES_BOOST), lambda: upstream(size), key=key).copy()

    generatemask.cached_by_ctrlgen = True  # type: ignore[attr-defined]
    generatemask.upstream = upstream  # type: ignore[attr-defined]
    depthmap.generatemask = generatemask


def build_normal_bae() -> Any:
    import types

    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                 sampling_ratio=0.4, importance_ratio=0.7)
    return NNET(args)


def build_pix2pix(owner: str) -> Any:
    """LeReS++'s merge network (controlnet_aux's ``Pix2Pix4DepthModel``) filled from latest_net_G.pth.

    Upstream builds it from command-line options and places it on CUDA itself (it has no
    ``to``); the options it reads are given here, with the configured device
    (``preprocess="scale_width"`` only keeps it from switching on cuDNN benchmarking globally).
    """
    import types

    import torch
    from controlnet_aux.leres.pix2pix.models.pix2pix4depth_model import Pix2Pix4DepthModel

    path = annotators.weight_path(owner, LERES_BOOST)
    device = torch.device(annotators.torch_device())

    def loader() -> Any:
        state = annotators.load_weights(owner, LERES_BOOST)
        gpu_ids = [device.index or 0] if device.type == "cuda" else []
        options = types.SimpleNamespace(gpu_ids=gpu_ids, isTrain=False, checkpoints_dir="", name="",
                                        preprocess="scale_width", input_nc=2, output_nc=1)
        model = Pix2Pix4DepthModel(options)
        net = model.netG.module if isinstance(model.netG, torch.nn.DataParallel) else model.netG
        fill(net, owner, LERES_BOOST, path, state)
        net.float().requires_grad_(False)
        model.eval()
        return model

    return annotators.loaded(cache_owner(LERES_BOOST), loader, key=(str(path), str(device)))
