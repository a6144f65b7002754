"""SCRFD from the model store and SAM refinement, on tiny random weights in the real layouts
(antelopev2's ``scrfd_10g_bnkps.onnx``; Meta's ``sam_vit_b_01ec64.pth`` key names), compared
with insightface's and segment_anything's own code on the same files."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

import ctrlgen
from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelNotFoundError
from ctrlgen.testing.roots import annotator_downloads, using_model_roots
from ctrlgen.testing.tiny_ip_adapter import write_tiny_scrfd


@pytest.fixture
def scrfd_file(use_detector_root):
    pytest.importorskip("insightface")
    return write_tiny_scrfd(use_detector_root / "models" / "insightface" / "models" / "antelopev2"
                            / "scrfd_10g_bnkps.onnx", seed=3)


def test_scrfd_matches_insightface_on_the_same_file(scrfd_file, astronaut):
    from insightface.model_zoo.scrfd import SCRFD

    reference = SCRFD(model_file=str(scrfd_file))
    reference.prepare(ctx_id=-1)
    boxes, kpss = reference.detect(np.ascontiguousarray(astronaut[:, :, ::-1]), input_size=(640, 640),
                                   max_num=0, det_thresh=0.3)
    found = ctrlgen.detect("scrfd", astronaut)
    assert len(found) == len(boxes) > 0
    by_score = sorted(zip(boxes, kpss, strict=True), key=lambda pair: -pair[0][4])
    for detection, (box, kps) in zip(found, by_score, strict=True):
        assert detection.label == "face" and detection.confidence == pytest.approx(float(box[4]), abs=1e-6)
        clipped = np.clip(box[:4], 0, 512)
        assert np.allclose(detection.box, clipped, atol=1e-3)
        assert np.allclose(detection.keypoints, kps, atol=1e-3)


def test_scrfd_without_weights_says_what_to_get(tmp_path, fresh_plugins, astronaut):
    pytest.importorskip("insightface")
    with using_model_roots(str(tmp_path)), pytest.raises(ModelNotFoundError, match="(?s)scrfd_10g_bnkps.*antelopev2"):
        ctrlgen.detect("scrfd", astronaut)


def _tiny_sam():
    """segment_anything's ``Sam`` with a small ViT and decoder, random weights."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=32, img_size=256, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,),
            window_size=4, out_chans=32),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=32, mlp_dim=64, num_heads=8), transformer_dim=32, iou_head_depth=3,
            iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


@pytest.fixture
def sam_file(use_detector_root, torch_single_thread):
    pytest.importorskip("segment_anything")
    pytest.importorskip("mediapipe")
    import torch

    path = annotator_downloads(use_detector_root, "sam") / "sam_vit_b_01ec64.pth"
    if not path.exists():
        torch.save(_tiny_sam().state_dict(), path)
    return path


def test_sam_refine_turns_each_box_into_sams_mask(sam_file, astronaut):
    (face,) = ctrlgen.detect("mediapipe_face_full", astronaut)
    (refined,) = ctrlgen.detect("sam_refine", astronaut, detector="mediapipe_face_full")
    assert refined.box == face.box and refined.label == "face" and refined.confidence == face.confidence
    assert np.array_equal(refined.keypoints, face.keypoints)
    expected = preprocess("sam", astronaut, box=json.dumps(list(face.box)), multimask=False)
    assert refined.mask.shape == (512, 512) and np.array_equal(refined.mask, expected.image[:, :, 0])
    assert refined.data["sam_score"] == expected.data["score"]


def test_sam_refine_passes_the_detectors_params(sam_file, group_photo):
    many = ctrlgen.detect("sam_refine", group_photo, detector="mediapipe_hands")
    few = ctrlgen.detect("sam_refine", group_photo, detector="mediapipe_hands",
                         detector_params={"max_hands": 1})
    assert len(many) == 3 and len(few) == 1 and all(d.mask is not None for d in many)
