"""Semantic segmentation networks from transformers, loaded from local folders only.

A model is a Hugging Face repo folder (``config.json``, weights, ``preprocessor_config.json``,
for OneFormer also the CLIP tokenizer files) found through the model store: in the HF
cache after ``huggingface-cli download <repo>``, or copied to
``<annotators>/<org>/<name>/`` (ComfyUI's ckpts layout) or ``<annotators>/…/<name>/``.
Nothing is downloaded: every ``from_pretrained`` gets the folder and ``local_files_only``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrlgen.core.errors import ModelFormatError
from ctrlgen.core.models.annotators import loaded, torch_device, weight_path
from ctrlgen.core.plugins.specs import WeightFile


@dataclass(frozen=True)
class SegModel:
    """A segmentation checkpoint: its hub repo, architecture and the palette of its classes."""

    repo: str
    kind: str  # "oneformer" | "upernet"
    palette: str  # "ade20k" | "coco"

    @property
    def weight(self) -> WeightFile:
        name = self.repo.split("/", 1)[1]
        return WeightFile(
            f"{self.repo}/model.safetensors",
            source=self.repo,
            alternatives=(f"{self.repo}/pytorch_model.bin", f"{name}/model.safetensors",
                          f"{name}/pytorch_model.bin"),
        )


ONEFORMER_ADE20K = SegModel("shi-labs/oneformer_ade20k_swin_large", "oneformer", "ade20k")
ONEFORMER_COCO = SegModel("shi-labs/oneformer_coco_swin_large", "oneformer", "coco")
UPERNET_ADE20K = SegModel("openmmlab/upernet-convnext-small", "upernet", "ade20k")


def model_folder(owner: str, model: SegModel) -> Path:
    """The local folder of ``model`` (its weights file's folder), checked to be complete."""
    folder = weight_path(owner, model.weight).parent
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (folder / name).is_file()]
    if missing:
        raise ModelFormatError(
            f"{folder} has the weights of {model.repo} but not {', '.join(missing)}; "
            f"copy the whole repo folder (huggingface-cli download {model.repo})"
        )
    return folder


def _load(model: SegModel, folder: Path, device: str) -> tuple[Any, Any]:
    if model.kind == "oneformer":
        from transformers import OneFormerForUniversalSegmentation, OneFormerProcessor

        # The repos' preprocessor config names a class-info JSON in the shi-labs/oneformer_demo hub
        # repo; it only labels training data, so it is dropped rather than fetched.
        processor = OneFormerProcessor.from_pretrained(folder, local_files_only=True, class_info_file=None)
        network = OneFormerForUniversalSegmentation.from_pretrained(folder, local_files_only=True)
    else:
        from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        network = UperNetForSemanticSegmentation.from_pretrained(folder, local_files_only=True)
    return processor, network.eval().to(device)


def segment(owner: str, model: SegModel, image: np.ndarray) -> np.ndarray:
    """Class index per pixel (``int64`` H×W) for an RGB ``uint8`` image, at the image's size."""
    import torch

    folder = model_folder(owner, model)
    device = torch_device()
    processor, network = loaded(owner, lambda: _load(model, folder, device), key=(str(folder), device))
    extra = {"task_inputs": ["semantic"]} if model.kind == "oneformer" else {}
    inputs = processor(images=image, return_tensors="pt", do_resize=False, **extra).to(device)
    with torch.inference_mode():
        outputs = network(**inputs)
    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])[0]
    return labels.cpu().numpy().astype(np.int64)
