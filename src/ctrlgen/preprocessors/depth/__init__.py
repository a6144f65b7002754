"""Depth maps: MiDaS, ZoeDepth, LeReS (and LeReS++ with the boost merge), Depth Anything V2.

Every map is near = bright, ``0..255``, normalised per image the way upstream does it
(controlnet_aux's detectors; Depth Anything V2 as its own ``infer_image`` and
sd-webui-controlnet do). Weights come from the model store; nothing downloads.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION
from ctrlgen.core.models.annotators import unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import Param, PreprocessorSpec
from ctrlgen.preprocessors.depth import depth_anything, networks
from ctrlgen.preprocessors.depth.networks import (
    LERES,
    LERES_BOOST,
    MIDAS,
    ZOE,
    detector_input,
    run_detector,
    to_input_size,
)

LERES_PARAMS = (
    DETECT_RESOLUTION,
    Param("remove_near", "float", default=0.0, min=0.0, max=100.0, step=0.1,
          description="Remove near %: everything nearer than this percent of the depth range is "
          "flattened to white (sd-webui-controlnet's thr_a)"),
    Param("remove_background", "float", default=0.0, min=0.0, max=100.0, step=0.1,
          description="Remove background %: pixels of the map darker than this percent of white "
          "(the far part) are set to black (sd-webui-controlnet's thr_b)"),
)
DEPTH_ANYTHING_PARAMS = (
    Param("size", "choice", default="large", choices=depth_anything.SIZES,
          description="Model size: small (ViT-S, 25M), base (ViT-B, 98M) or large (ViT-L, 335M); "
          "each needs its own weights"),
    replace(DETECT_RESOLUTION, default=518, step=14,
            description="Short side the network runs at, rounded up to a multiple of 14 "
            "(0 = the input's own size); 518 is what the model was trained at"),
)


def run_midas(image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int) -> np.ndarray:
    from controlnet_aux.midas import MidasDetector

    height, width = image.shape[:2]
    detector = MidasDetector(networks.load("depth_midas", MIDAS, networks.build_midas))
    depth = run_detector(detector, detector_input(image, detect_resolution))
    return to_input_size(depth, width, height)


def run_zoe(image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int) -> np.ndarray:
    from controlnet_aux.zoe import ZoeDetector

    height, width = image.shape[:2]
    detector = ZoeDetector(networks.load("depth_zoe", ZOE, networks.build_zoe))
    depth = run_detector(detector, detector_input(image, detect_resolution))
    return to_input_size(depth, width, height)


def leres(owner: str, boost: bool):
    def run(image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int,
            remove_near: float, remove_background: float) -> np.ndarray:
        from controlnet_aux.leres import LeresDetector

        height, width = image.shape[:2]
        model = networks.load(owner, LERES, networks.build_leres, prepare=networks.batch_statistics)
        merge = None
        if boost:
            merge = networks.build_pix2pix(owner)
            networks.use_cached_boost_mask()
        # The boost's resolution search fails on images under 160 px (upstream raises
        # UnboundLocalError); run it at 192 px at least.
        work = detector_input(image, detect_resolution, min_long_side=160 if boost else 0)
        depth = run_detector(LeresDetector(model, merge), work, thr_a=remove_near,
                             thr_b=remove_background, boost=boost)
        return to_input_size(depth, width, height)

    return run


def run_depth_anything(image: np.ndarray, mask: np.ndarray | None = None, *, size: str,
                       detect_resolution: int) -> np.ndarray:
    depth = depth_anything.depth_map(image, size, detect_resolution)
    return np.repeat(depth[:, :, None], 3, axis=2)


@hookimpl
def ctrlgen_preprocessors():
    yield PreprocessorSpec(
        name="depth_midas",
        run=run_midas,
        params=(DETECT_RESOLUTION,),
        family="depth",
        description="Depth map from MiDaS DPT-Hybrid (near = bright)",
        weights=(MIDAS,),
        requires=networks.REQUIRES,
        unload=networks.unload_files(MIDAS),
    )
    yield PreprocessorSpec(
        name="depth_zoe",
        run=run_zoe,
        params=(DETECT_RESOLUTION,),
        family="depth",
        description="Depth map from ZoeDepth (ZoeD_M12_N, metric depth shown near = bright)",
        weights=(ZOE,),
        requires=networks.REQUIRES,
        unload=networks.unload_files(ZOE),
    )
    yield PreprocessorSpec(
        name="depth_leres",
        run=leres("depth_leres", boost=False),
        params=LERES_PARAMS,
        family="depth",
        description="Depth map from LeReS (ResNeXt-101), with near/background removal",
        weights=(LERES,),
        requires=networks.REQUIRES,
        unload=networks.unload_files(LERES),
    )
    yield PreprocessorSpec(
        name="depth_leres++",
        run=leres("depth_leres++", boost=True),
        params=LERES_PARAMS,
        family="depth",
        description="LeReS depth with the boost (multi-resolution merge network): finer detail, much slower",
        weights=(LERES, LERES_BOOST),
        requires=networks.REQUIRES + ("skimage",),
        unload=networks.unload_files(LERES, LERES_BOOST),
    )
    yield PreprocessorSpec(
        name="depth_anything_v2",
        run=run_depth_anything,
        params=DEPTH_ANYTHING_PARAMS,
        family="depth",
        description="Depth map from Depth Anything V2 (transformers; original .pth or the -hf folder)",
        weights=tuple(depth_anything.WEIGHTS.values()),
        requires=("torch", "transformers"),
        unload=unloader(depth_anything.OWNER),
    )
