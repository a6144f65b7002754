"""Semantic segmentation maps in the ADE20K and COCO palettes ControlNet seg models know.

- ``seg_ofade20k``: OneFormer (Swin-L) trained on ADE20K, 150 classes.
- ``seg_ofcoco``: OneFormer (Swin-L) trained on COCO panoptic, 133 classes.
- ``seg_ufade20k``: sd-webui-controlnet runs UniFormer (mmseg) here; mmseg/mmcv are not
  installable alongside this stack, so ctrlgen uses the equivalent transformers UperNet
  (openmmlab/upernet-convnext-small, also ADE20K-150) with the same palette.

Each pixel gets its class's palette colour exactly (flat fills, no outlines); the data lists
the classes present, largest first.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ctrlgen.core.images import DETECT_RESOLUTION, detection_size, resize
from ctrlgen.core.models.annotators import unloader
from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import PreprocessorSpec, PreprocessResult
from ctrlgen.preprocessors.segmentation.networks import (
    ONEFORMER_ADE20K,
    ONEFORMER_COCO,
    UPERNET_ADE20K,
    SegModel,
    segment,
)
from ctrlgen.preprocessors.segmentation.palettes import colorize

PARAMS = (replace(DETECT_RESOLUTION, default=512),)


def make_runner(name: str, model: SegModel):
    def run(image: np.ndarray, mask: np.ndarray | None = None, *, detect_resolution: int) -> PreprocessResult:
        import cv2

        height, width = image.shape[:2]
        work = resize(image, *detection_size(width, height, detect_resolution))
        labels = segment(name, model, work)
        if labels.shape != (height, width):
            labels = cv2.resize(labels.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)
        colored, present = colorize(labels, model.palette)
        return PreprocessResult(colored, {"palette": model.palette, "model": model.repo, "labels": present})

    return run


VARIANTS = (
    ("seg_ofade20k", ONEFORMER_ADE20K, "OneFormer ADE20K segmentation in the ADE20K palette"),
    ("seg_ofcoco", ONEFORMER_COCO, "OneFormer COCO panoptic segmentation in the COCO palette"),
    ("seg_ufade20k", UPERNET_ADE20K, "UperNet (ConvNeXt) ADE20K segmentation in the ADE20K palette "
                                     "(stands in for UniFormer)"),
)


@hookimpl
def ctrlgen_preprocessors():
    for name, model, description in VARIANTS:
        yield PreprocessorSpec(
            name=name,
            run=make_runner(name, model),
            params=PARAMS,
            family="segmentation",
            description=description,
            weights=(model.weight,),
            requires=("transformers", "torch", "cv2"),
            unload=unloader(name),
        )
