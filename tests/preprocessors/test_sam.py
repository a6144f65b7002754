"""sam / sam_auto: a tiny SAM checkpoint (Meta's file name and key names, a small ViT) loaded through
the real loader; outputs compared with segment_anything's own SamPredictor / SamAutomaticMaskGenerator."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelFormatError, ModelNotFoundError, ParamError
from ctrlgen.core.models import annotators
from ctrlgen.testing.contracts import PreprocessorContract
from ctrlgen.testing.roots import annotator_downloads

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY = {"img_size": 256, "embed_dim": 32, "depth": 2, "num_heads": 2, "window_size": 4,
        "global_attn_indexes": (1,), "out_chans": 32}


def tiny_sam(seed: int = 0):
    """segment_anything's ``Sam`` with a small ViT and decoder, random weights (rel-pos tables too)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    grid, dim = TINY["img_size"] // 16, TINY["out_chans"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=TINY["depth"], embed_dim=TINY["embed_dim"], img_size=TINY["img_size"], mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=TINY["num_heads"], patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=TINY["global_attn_indexes"],
            window_size=TINY["window_size"], out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(TINY["img_size"],) * 2, mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=dim, mlp_dim=64, num_heads=8), transformer_dim=dim, iou_head_depth=3,
            iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    with torch.no_grad():
        for name, parameter in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:  # zero-initialised upstream; make them matter
                parameter.normal_(0, 0.05)
    return sam.eval()


@pytest.fixture(scope="session")
def tiny_sam_file(annotator_root):
    """Meta's ViT-B file name in sd-webui-controlnet's downloads/sam folder, holding the tiny state dict."""
    import torch

    path = annotator_downloads(annotator_root, "sam") / "sam_vit_b_01ec64.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def reference_sam(tiny_sam_file):
    """The same weights in segment_anything's own model, loaded the plain way (weights only)."""
    import torch

    sam = tiny_sam(seed=99)
    sam.load_state_dict(torch.load(tiny_sam_file, weights_only=True))
    return sam


@pytest.fixture(scope="module")
def photo(astronaut):
    return np.ascontiguousarray(astronaut[::4, ::4])  # 128²


@pytest.mark.usefixtures("tiny_sam_file", "use_annotator_root")
class TestSamContract(PreprocessorContract):
    preprocessor = "sam"
    params = {"points": "[[40, 30, 1], [80, 60, 0]]"}


@pytest.mark.usefixtures("tiny_sam_file", "use_annotator_root")
class TestSamAutoContract(PreprocessorContract):
    preprocessor = "sam_auto"
    params = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
              "detect_resolution": 64, "model": "vit_b"}


def predict(sam, image, **prompt):
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(**prompt)
    return masks[int(np.argmax(scores))], float(np.max(scores))


@pytest.mark.usefixtures("use_annotator_root")
@pytest.mark.parametrize(("params", "prompt"), [
    ({"points": "[[60, 40, 1]]"},
     {"point_coords": np.array([[60, 40]], np.float32), "point_labels": np.array([1]),
      "multimask_output": True}),
    ({"points": "[[60, 40, 1], [10, 100, 0]]", "multimask": False},
     {"point_coords": np.array([[60, 40], [10, 100]], np.float32), "point_labels": np.array([1, 0]),
      "multimask_output": False}),
    ({"box": "[30, 10, 90, 70]", "multimask": False},
     {"box": np.array([30, 10, 90, 70], np.float32), "multimask_output": False}),
    ({"points": "[[60, 40]]", "box": "[30, 10, 90, 70]"},
     {"point_coords": np.array([[60, 40]], np.float32), "point_labels": np.array([1]),
      "box": np.array([30, 10, 90, 70], np.float32), "multimask_output": True}),
])
def test_sam_matches_segment_anythings_predictor(reference_sam, photo, params, prompt):
    expected_mask, expected_score = predict(reference_sam, photo, **prompt)
    result = preprocess("sam", photo, **params)
    json.dumps(result.data)
    assert np.array_equal(result.image[:, :, 0] > 0, expected_mask)
    assert set(np.unique(result.image)) <= {0, 255} and (result.image[:, :, :1] == result.image).all()
    assert result.data["score"] == pytest.approx(expected_score, abs=1e-5)
    assert result.data["area"] == int(expected_mask.sum())


@pytest.mark.usefixtures("use_annotator_root")
def test_a_mask_without_clicks_prompts_with_its_bounding_box(reference_sam, photo):
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[20:50, 30:90] = 255
    expected_mask, _ = predict(reference_sam, photo, box=np.array([30, 20, 90, 50], np.float32),
                               multimask_output=True)
    result = preprocess("sam", photo, mask=mask)
    assert result.data["prompt"] == "mask_bbox" and result.data["box"] == [30.0, 20.0, 90.0, 50.0]
    assert np.array_equal(result.image[:, :, 0] > 0, expected_mask)


@pytest.mark.usefixtures("use_annotator_root")
def test_clicks_on_the_same_image_reuse_its_embedding(photo, monkeypatch):
    from segment_anything import SamPredictor

    calls = []
    original = SamPredictor.set_image
    monkeypatch.setattr(SamPredictor, "set_image",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    first = preprocess("sam", photo, points="[[60, 40, 1]]")
    preprocess("sam", photo, points="[[20, 100, 1]]")
    again = preprocess("sam", photo.copy(), points="[[60, 40, 1]]")
    assert len(calls) == 1 and np.array_equal(first.image, again.image)
    preprocess("sam", photo[:, ::-1], points="[[60, 40, 1]]")  # another picture: a new embedding
    assert len(calls) == 2


@pytest.mark.usefixtures("use_annotator_root")
@pytest.mark.parametrize(("params", "message"), [
    ({}, "sam needs a prompt"),
    ({"points": "[[60, 40, 1]"}, r"sam.points='\[\[60, 40, 1\]' is not valid JSON"),
    ({"points": "[60, 40, 1]"}, "sam.points must be a JSON list of"),
    ({"points": "[[60, 40, 2]]"}, "has label 2"),
    ({"points": "[[600, 40, 1]]"}, r"point \(600, 40\) is outside the 128×128 image"),
    ({"box": "[90, 10, 30, 70]"}, "x0 must be left of x1"),
    ({"box": "[1, 2, 3]"}, r"sam.box must be four numbers"),
])
def test_bad_prompts_are_clear_errors(tiny_sam_file, photo, params, message):
    with pytest.raises(ParamError, match=message):
        preprocess("sam", photo, **params)


@pytest.mark.usefixtures("use_annotator_root")
def test_sam_auto_matches_the_automatic_mask_generator(reference_sam, photo):
    from segment_anything import SamAutomaticMaskGenerator

    from ctrlgen.preprocessors.segmentation.palettes import distinct_colors

    settings = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    expected = SamAutomaticMaskGenerator(reference_sam, **settings).generate(photo)
    expected = sorted(expected, key=lambda s: s["area"], reverse=True)
    assert len(expected) >= 1  # random weights give few distinct masks; painting is tested below
    painted = np.zeros(photo.shape, np.uint8)
    for colour, segment in zip(distinct_colors(len(expected)), expected, strict=True):
        painted[segment["segmentation"]] = colour
    result = preprocess("sam_auto", photo, detect_resolution=0, **settings)
    json.dumps(result.data)
    assert np.array_equal(result.image, painted)
    segments = result.data["segments"]
    assert [s["area"] for s in segments] == [s["area"] for s in expected]
    x, y, w, h = expected[0]["bbox"]
    assert segments[0]["bbox"] == [x, y, x + w, y + h]


@pytest.mark.usefixtures("tiny_sam_file", "use_annotator_root")
def test_sam_auto_paints_segments_largest_first_and_scales_them_back(photo, monkeypatch):
    from segment_anything import SamAutomaticMaskGenerator

    from ctrlgen.preprocessors.segmentation.palettes import distinct_colors

    def fake_generate(self, image):  # at detect_resolution=64 the 128² photo is analysed at 64²
        assert image.shape == (64, 64, 3)
        big, small = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
        big[8:40, 8:56] = True
        small[16:24, 16:32] = True  # inside big: painted on top of it
        return [{"segmentation": small, "area": 128, "bbox": [16, 16, 16, 8], "predicted_iou": 0.9,
                 "stability_score": 0.97},
                {"segmentation": big, "area": 1536, "bbox": [8, 8, 48, 32], "predicted_iou": 0.8,
                 "stability_score": 0.96}]

    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", fake_generate)
    result = preprocess("sam_auto", photo, detect_resolution=64)
    first, second = (tuple(c) for c in distinct_colors(2))
    assert tuple(result.image[40, 100]) == first and tuple(result.image[40, 40]) == second
    assert not result.image[100:, :].any() and not result.image[:, 115:].any()
    assert result.data["segments"] == [
        {"id": 1, "color": list(first), "bbox": [16.0, 16.0, 112.0, 80.0], "area": 6144, "predicted_iou": 0.8,
         "stability_score": 0.96},
        {"id": 2, "color": list(second), "bbox": [32.0, 32.0, 64.0, 48.0], "area": 512, "predicted_iou": 0.9,
         "stability_score": 0.97},
    ]


def test_distinct_colors_are_fixed_bright_and_different():
    from ctrlgen.preprocessors.segmentation.palettes import distinct_colors

    colours = distinct_colors(64)
    assert np.array_equal(colours, distinct_colors(64)) and np.array_equal(colours[:10], distinct_colors(10))
    assert colours.max(axis=1).min() > 100  # never (near) black, the "no segment" colour
    assert len({tuple(c) for c in colours}) == 64


@pytest.mark.parametrize("kind", ["vit_h", "vit_l", "vit_b"])
def test_loader_reads_the_real_architectures_from_their_weights(kind):
    import torch
    from segment_anything import sam_model_registry

    from ctrlgen.preprocessors.sam.model import sam_config

    with torch.device("meta"):  # shapes only: no memory, no time
        state = sam_model_registry[kind]().state_dict()
    expected = {"vit_h": (1280, 32, 16, [7, 15, 23, 31]), "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
                "vit_b": (768, 12, 12, [2, 5, 8, 11])}[kind]
    config = sam_config(state)
    found = (config["embed_dim"], config["depth"], config["num_heads"], config["global_attn_indexes"])
    assert found == expected
    assert (config["img_size"], config["window_size"], config["out_chans"], config["decoder_mlp_dim"]) == \
        (1024, 14, 256, 2048)


def test_loader_sizes_the_tiny_model_from_its_weights():
    from ctrlgen.preprocessors.sam.model import build_sam, sam_config

    state = tiny_sam().state_dict()
    config = sam_config(state)
    assert {k: config[k] for k in TINY} == {**TINY, "global_attn_indexes": list(TINY["global_attn_indexes"])}
    model = build_sam(state)
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    assert all(np.array_equal(loaded[key].numpy(), state[key].numpy()) for key in state)


def test_missing_checkpoint_names_the_files_and_folders(tmp_path, monkeypatch, photo):
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)  # an A1111 install ...
    annotator_downloads(tmp_path, "sam")  # ... with sd-webui-controlnet, but no SAM file
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.unload()
    annotators.reset_default_store()
    try:
        with pytest.raises(ModelNotFoundError) as info:
            preprocess("sam", photo, points="[[10, 10, 1]]")
        with pytest.raises(ModelNotFoundError, match="sam_vit_l_0b3195.pth"):
            preprocess("sam", photo, points="[[10, 10, 1]]", model="vit_l")
    finally:
        annotators.reset_default_store()
    message = str(info.value)
    for name in ("sam_vit_h_4b8939.pth", "sam_vit_l_0b3195.pth", "sam_vit_b_01ec64.pth",
                 "ybelkada/segment-anything"):
        assert name in message
    assert str(tmp_path / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads") in message


def test_a_file_that_is_not_sam_is_a_clear_error(tmp_path, monkeypatch, photo):
    import torch

    not_sam = annotator_downloads(tmp_path, "sam") / "sam_vit_b_01ec64.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, not_sam)
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.unload()
    annotators.reset_default_store()
    try:
        with pytest.raises(ModelFormatError, match="not a Segment Anything"):
            preprocess("sam", photo, points="[[10, 10, 1]]")
    finally:
        annotators.unload()
        annotators.reset_default_store()


@pytest.mark.weights
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit_h", "vit_l", "vit_b"])
def test_real_sam_matches_segment_anything(real_weight, astronaut, kind):
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    from ctrlgen.preprocessors.sam.model import SAM_WEIGHTS

    reference = sam_model_registry[kind](checkpoint=str(real_weight(SAM_WEIGHTS[kind])))
    expected, score = predict(reference, astronaut, point_coords=np.array([[225, 120]], np.float32),
                              point_labels=np.array([1]), multimask_output=True)
    result = preprocess("sam", astronaut, points="[[225, 120, 1]]", model=kind)
    assert np.array_equal(result.image[:, :, 0] > 0, expected)
    assert result.data["score"] == pytest.approx(score, abs=1e-4)
    assert expected[100:140, 205:245].mean() > 0.5  # a click on the face selects (at least) the face
    segments = SamAutomaticMaskGenerator(reference).generate(astronaut)
    auto = preprocess("sam_auto", astronaut, model=kind, detect_resolution=512)
    assert len(auto.data["segments"]) == len(segments)
