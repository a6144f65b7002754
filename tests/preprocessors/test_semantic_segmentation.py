"""seg_ofade20k / seg_ofcoco / seg_ufade20k: tiny transformers folders in the real repos' layout
(config, weights, preprocessor config naming the hub class-info file, CLIP tokenizer) loaded offline
through the real code, compared with the plain transformers call; the palettes checked against upstream."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctrlgen.core.engine.preprocess import preprocess
from ctrlgen.core.errors import ModelFormatError, ModelNotFoundError
from ctrlgen.core.models import annotators
from ctrlgen.preprocessors.segmentation.palettes import (
    ADE20K_COLORS,
    ADE20K_NAMES,
    COCO_COLORS,
    COCO_NAMES,
    colorize,
)
from ctrlgen.testing.contracts import PreprocessorContract
from ctrlgen.testing.roots import annotator_downloads

pytestmark = pytest.mark.usefixtures("torch_single_thread")

VARIANTS = {"seg_ofade20k": ("oneformer_ade20k_swin_large", 150, "ade20k"),
            "seg_ofcoco": ("oneformer_coco_swin_large", 133, "coco"),
            "seg_ufade20k": ("upernet-convnext-small", 150, "ade20k")}


def write_tiny_oneformer(folder, num_labels: int) -> None:
    import torch
    from transformers import (
        OneFormerConfig,
        OneFormerForUniversalSegmentation,
        OneFormerImageProcessor,
        SwinConfig,
    )

    from ctrlgen.core.models.tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                          out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0)
    config = OneFormerConfig(
        backbone_config=backbone, num_queries=8, hidden_dim=32, conv_dim=32, mask_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=32, query_dec_layers=1,
        text_encoder_width=32, text_encoder_num_layers=1,
        id2label={i: f"class {i}" for i in range(num_labels)},
        label2id={f"class {i}": i for i in range(num_labels)})
    OneFormerForUniversalSegmentation(config).save_pretrained(folder)
    OneFormerImageProcessor(size={"shortest_edge": 512, "longest_edge": 2048}).save_pretrained(folder)
    load_clip_tokenizer("clip").save_pretrained(folder)
    # As in shi-labs' repos: the processor config names a class-info JSON in the oneformer_demo hub repo.
    processor_config = folder / "preprocessor_config.json"
    settings = json.loads(processor_config.read_text())
    settings.update(class_info_file="ade20k_panoptic.json" if num_labels == 150 else "coco_panoptic.json",
                    repo_path="shi-labs/oneformer_demo", num_text=134)
    processor_config.write_text(json.dumps(settings))


def write_tiny_upernet(folder) -> None:
    import torch
    from transformers import (
        ConvNextConfig,
        SegformerImageProcessor,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    torch.manual_seed(0)
    backbone = ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_channels=8,
                           use_auxiliary_head=False, num_labels=150)
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 512, "width": 512}).save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_seg_models(annotator_root):
    """ComfyUI-style ``<org>/<repo>/`` folder for one, bare ``<repo>/`` folders for the others."""
    ckpts = annotator_downloads(annotator_root, "segmentation")
    folders = {"seg_ofade20k": ckpts / "shi-labs" / "oneformer_ade20k_swin_large",
               "seg_ofcoco": ckpts / "oneformer_coco_swin_large",
               "seg_ufade20k": ckpts / "upernet-convnext-small"}
    write_tiny_oneformer(folders["seg_ofade20k"], 150)
    write_tiny_oneformer(folders["seg_ofcoco"], 133)
    write_tiny_upernet(folders["seg_ufade20k"])
    return folders


@pytest.fixture(scope="module")
def seg_root(tiny_seg_models, annotator_root):
    """``use_annotator_root`` for the whole module: the tiny models stay loaded from test to test
    (loading one costs ~0.5 s, mostly the tokenizer; the contract runs each variant a dozen times)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CTRLGEN_MODEL_ROOTS", str(annotator_root))
        annotators.unload()
        annotators.reset_default_store()
        yield annotator_root
    annotators.unload()
    annotators.reset_default_store()


@pytest.mark.usefixtures("seg_root")
class TestOneformerAde20kContract(PreprocessorContract):
    preprocessor = "seg_ofade20k"
    params = {"detect_resolution": 64}


@pytest.mark.usefixtures("seg_root")
class TestOneformerCocoContract(PreprocessorContract):
    preprocessor = "seg_ofcoco"
    params = {"detect_resolution": 64}


@pytest.mark.usefixtures("seg_root")
class TestUpernetAde20kContract(PreprocessorContract):
    preprocessor = "seg_ufade20k"
    params = {"detect_resolution": 64}


def transformers_labels(folder, name: str, image: np.ndarray) -> np.ndarray:
    """The reference: the plain transformers call on the same folder and picture."""
    import torch
    from transformers import (
        AutoImageProcessor,
        OneFormerForUniversalSegmentation,
        OneFormerProcessor,
        UperNetForSemanticSegmentation,
    )

    if name.startswith("seg_of"):
        processor = OneFormerProcessor.from_pretrained(folder, local_files_only=True, class_info_file=None)
        model = OneFormerForUniversalSegmentation.from_pretrained(folder, local_files_only=True).eval()
        inputs = processor(images=image, task_inputs=["semantic"], return_tensors="pt", do_resize=False)
    else:
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        model = UperNetForSemanticSegmentation.from_pretrained(folder, local_files_only=True).eval()
        inputs = processor(images=image, return_tensors="pt", do_resize=False)
    with torch.no_grad():
        outputs = model(**inputs)
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])[0].numpy()


@pytest.mark.usefixtures("seg_root")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_transformers_on_the_same_folder(tiny_seg_models, astronaut, name):
    photo = np.ascontiguousarray(astronaut[::4, ::4])  # 128²: detect_resolution=128 keeps it as it is
    labels = transformers_labels(tiny_seg_models[name], name, photo)
    palette = np.array(ADE20K_COLORS if VARIANTS[name][2] == "ade20k" else COCO_COLORS, np.uint8)
    result = preprocess(name, photo, detect_resolution=128)
    json.dumps(result.data)
    assert np.array_equal(result.image, palette[labels])
    present = {entry["id"]: entry for entry in result.data["labels"]}
    assert set(present) == set(np.unique(labels).tolist())
    names = ADE20K_NAMES if VARIANTS[name][2] == "ade20k" else COCO_NAMES
    for class_id, entry in present.items():
        assert entry["name"] == names[class_id] and entry["color"] == list(palette[class_id])
        assert entry["fraction"] == pytest.approx((labels == class_id).mean(), abs=1e-6)
    assert result.data["palette"] == VARIANTS[name][2]


@pytest.mark.usefixtures("seg_root")
def test_upscaled_map_has_only_palette_colours(astronaut):
    result = preprocess("seg_ufade20k", astronaut, detect_resolution=64)
    colours = {tuple(c) for c in np.unique(result.image.reshape(-1, 3), axis=0)}
    assert len(colours) >= 2 and colours <= set(ADE20K_COLORS)


def test_ade20k_palette_is_controlnet_aux_and_mmseg_palette():
    from controlnet_aux.util import ade_palette

    assert [tuple(c) for c in ade_palette()] == list(ADE20K_COLORS)
    assert len(ADE20K_NAMES) == 150 and ADE20K_NAMES[0] == "wall" and ADE20K_NAMES[12] == "person"
    assert ADE20K_COLORS[12] == (150, 5, 61) and ADE20K_NAMES[149] == "flag"


def test_coco_palette_is_detectron2s_panoptic_colours():
    assert len(COCO_NAMES) == len(COCO_COLORS) == 133 and len(set(COCO_COLORS)) == 133
    assert (COCO_NAMES[0], COCO_COLORS[0]) == ("person", (220, 20, 60))
    assert (COCO_NAMES[79], COCO_NAMES[80]) == ("toothbrush", "banner")  # 80 things, then 53 stuff
    assert (COCO_NAMES[132], COCO_COLORS[132]) == ("rug-merged", (250, 141, 255))


def test_colorize_paints_exact_colours_and_lists_classes_largest_first():
    labels = np.zeros((10, 10), np.int64)
    labels[:, 6:] = 2
    labels[0, 0] = 12
    image, present = colorize(labels, "ade20k")
    assert tuple(image[5, 8]) == ADE20K_COLORS[2] and tuple(image[0, 0]) == ADE20K_COLORS[12]
    assert [p["id"] for p in present] == [0, 2, 12]
    assert present[2] == {"id": 12, "name": "person", "color": [150, 5, 61], "fraction": 0.01}


def test_missing_model_folder_names_the_repo_and_files(tmp_path, monkeypatch, astronaut):
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    annotator_downloads(tmp_path, "oneformer")
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.unload()
    annotators.reset_default_store()
    try:
        with pytest.raises(ModelNotFoundError) as info:
            preprocess("seg_ofcoco", astronaut)
    finally:
        annotators.reset_default_store()
    message = str(info.value)
    assert "shi-labs/oneformer_coco_swin_large/model.safetensors" in message
    assert "pytorch_model.bin" in message
    assert "ctrlgen models pull shi-labs/oneformer_coco_swin_large" in message


def test_weights_without_their_config_are_a_clear_error(tmp_path, monkeypatch, astronaut):
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    folder = annotator_downloads(tmp_path, "upernet") / "upernet-convnext-small"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(tmp_path))
    annotators.unload()
    annotators.reset_default_store()
    try:
        with pytest.raises(ModelFormatError, match="not config.json, preprocessor_config.json"):
            preprocess("seg_ufade20k", astronaut)
    finally:
        annotators.reset_default_store()


@pytest.mark.weights
@pytest.mark.slow
@pytest.mark.parametrize(("name", "person"), [("seg_ofade20k", 12), ("seg_ofcoco", 0), ("seg_ufade20k", 12)])
def test_real_models_match_transformers_and_find_the_person(real_weight, astronaut, name, person):
    from ctrlgen.preprocessors.segmentation.semantic import VARIANTS as SPECS

    model = next(model for variant, model, _ in SPECS if variant == name)
    folder = real_weight(model.weight).parent
    result = preprocess(name, astronaut, detect_resolution=512)
    labels = transformers_labels(folder, name, astronaut)
    palette = np.array(ADE20K_COLORS if model.palette == "ade20k" else COCO_COLORS, np.uint8)
    assert np.array_equal(result.image, palette[labels])
    assert labels[120, 225] == person  # the astronaut's face is a person
