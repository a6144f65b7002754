"""The model store over A1111, ComfyUI, Hugging Face cache and flat folders (header-only files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ctrlgen.core.config import Settings
from ctrlgen.core.errors import CtrlgenError, ModelNotFoundError
from ctrlgen.core.models import store as models_module
from ctrlgen.core.models.store import AmbiguousModelError, ModelStore
from ctrlgen.core.plugins import manager as plugins
from ctrlgen.core.plugins.specs import ModelRoot, WeightFile
from ctrlgen.testing.headers import write_real_model


@pytest.fixture
def reset_plugins():
    plugins.reset()
    yield
    plugins.reset()


def _touch(path: Path, data: bytes = b"\x80\x02weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _write_json(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def make_a1111(root: Path) -> Path:
    """An AUTOMATIC1111 install with the folders sd-webui-controlnet users have."""
    _touch(root / "webui.py", b"# webui")
    models = root / "models"
    write_real_model(models / "Stable-diffusion" / "sd15" / "dreamshaper_8.safetensors", "checkpoint", "sd15")
    write_real_model(
        models / "Stable-diffusion" / "sdxl_inpaint.safetensors", "checkpoint", "sdxl", "inpaint"
    )
    write_real_model(
        models / "ControlNet" / "control_v11p_sd15_canny.safetensors",
        "controlnet",
        "sd15",
        "",
        "original_bare",
    )
    _touch(models / "ControlNet" / "control_v11f1p_sd15_depth.pth")  # a pickle, not opened
    write_real_model(models / "ControlNet" / "ip-adapter_sd15.safetensors", "ip_adapter", "sd15")
    write_real_model(models / "Lora" / "add_detail.safetensors", "lora", "sd15")
    write_real_model(models / "VAE" / "vae-ft-mse-840000-ema-pruned.safetensors", "vae", "unknown")
    _touch(models / "insightface" / "models" / "antelopev2" / "glintr100.onnx")
    write_real_model(root / "embeddings" / "easynegative.safetensors", "embedding", "sd15")
    _touch(root / "extensions/sd-webui-controlnet/annotator/downloads/openpose/body_pose_model.pth")
    _touch(root / "extensions/sd-webui-controlnet/annotator/downloads/hed/ControlNetHED.pth")
    (models / "Stable-diffusion" / "sd15" / "dreamshaper_8.png").write_bytes(b"preview")  # not a model
    return root


def make_comfyui(root: Path) -> Path:
    """A ComfyUI install: models/<kind> folders, a diffusers folder, annotators in custom_nodes."""
    _touch(root / "main.py", b"# comfy")
    models = root / "models"
    write_real_model(models / "checkpoints" / "sdxl" / "juggernaut.safetensors", "checkpoint", "sdxl")
    write_real_model(models / "controlnet" / "union-promax.safetensors", "controlnet", "sdxl", "union")
    folder = models / "controlnet" / "diffusers_xl_canny"
    _write_json(
        folder / "config.json", {"_class_name": "ControlNetModel", "addition_embed_type": "text_time"}
    )
    write_real_model(folder / "diffusion_pytorch_model.safetensors", "controlnet", "sdxl", layout="diffusers")
    write_real_model(
        models / "ipadapter" / "ip-adapter-plus_sdxl_vit-h.safetensors", "ip_adapter", "sdxl", "plus"
    )
    write_real_model(
        models / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
        "clip_vision",
        "unknown",
        "vit_h",
    )
    write_real_model(models / "loras" / "xl" / "pixel.safetensors", "lora", "sdxl")
    write_real_model(models / "unet" / "flux1-dev.safetensors", "transformer", "flux")
    write_real_model(models / "vae" / "sdxl_vae.safetensors", "vae", "sdxl")
    write_real_model(models / "embeddings" / "negative_xl.safetensors", "embedding", "sdxl")
    _touch(models / "insightface" / "models" / "antelopev2" / "scrfd_10g_bnkps.onnx")
    _touch(models / "instantid" / "ip-adapter.bin")
    pipeline = models / "diffusers" / "tiny-sd15"
    _write_json(
        pipeline / "model_index.json",
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]},
    )
    _write_json(
        pipeline / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768}
    )
    write_real_model(pipeline / "unet" / "diffusion_pytorch_model.safetensors", "unet", "sd15")
    _touch(root / "custom_nodes/comfyui_controlnet_aux/ckpts/lllyasviel/Annotators/ControlNetHED.pth")
    return root


def make_hf_cache(cache: Path) -> Path:
    """The hub cache: blobs, snapshots made of symlinks, refs/main."""

    def repo(repo_id: str, files: dict[str, object], revision: str = "a" * 40, main: bool = True) -> Path:
        base = cache / ("models--" + repo_id.replace("/", "--"))
        snapshot = base / "snapshots" / revision
        for relative, content in files.items():
            blob = base / "blobs" / f"{abs(hash((repo_id, relative, revision))):x}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, dict):
                blob.write_text(json.dumps(content), encoding="utf-8")
            elif isinstance(content, tuple):
                write_real_model(blob.with_suffix(".safetensors"), *content)
                blob.with_suffix(".safetensors").rename(blob)
            else:
                blob.write_bytes(content)
            link = snapshot / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        if main:
            _touch(base / "refs" / "main", revision.encode())
        return snapshot

    repo(
        "runwayml/stable-diffusion-v1-5",
        {
            "model_index.json": {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
            },
            "unet/config.json": {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768},
            "unet/diffusion_pytorch_model.safetensors": ("unet", "sd15"),
            "vae/config.json": {"_class_name": "AutoencoderKL"},
            "vae/diffusion_pytorch_model.safetensors": ("vae", "unknown", "", "diffusers"),
            "v1-5-pruned-emaonly.safetensors": ("checkpoint", "sd15"),
        },
    )
    repo(
        "lllyasviel/control_v11p_sd15_canny",
        {
            "config.json": {"_class_name": "ControlNetModel", "cross_attention_dim": 768},
            "diffusion_pytorch_model.safetensors": ("controlnet", "sd15", "", "diffusers"),
        },
    )
    repo("lllyasviel/Annotators", {"body_pose_model.pth": b"pose", "ControlNetHED.pth": b"hed"})
    repo("lllyasviel/Annotators", {"stale_only_in_old_revision.pth": b"old"}, revision="b" * 40, main=False)
    repo(
        "h94/IP-Adapter",
        {
            "models/ip-adapter_sd15.safetensors": ("ip_adapter", "sd15"),
            "models/image_encoder/config.json": {
                "architectures": ["CLIPVisionModelWithProjection"],
                "hidden_size": 1280,
                "num_hidden_layers": 32,
            },
            "models/image_encoder/model.safetensors": ("clip_vision", "unknown", "vit_h"),
            "sdxl_models/ip-adapter_sdxl.safetensors": ("ip_adapter", "sdxl"),
        },
    )
    repo("DIAMONIK7777/antelopev2", {"glintr100.onnx": b"onnx", "scrfd_10g_bnkps.onnx": b"onnx"})
    return cache


def _by_name(store: ModelStore) -> dict[str, object]:
    return {entry.name: entry for entry in store.scan()}


def test_a1111_install_is_scanned_by_category_and_content(tmp_path):
    root = make_a1111(tmp_path / "webui")
    store = ModelStore([ModelRoot(root)])
    assert store.resolved_roots()[0].layout == "a1111"
    entries = _by_name(store)
    expected = {
        "sd15/dreamshaper_8": ("checkpoints", "checkpoint", "sd15", ""),
        "sdxl_inpaint": ("checkpoints", "checkpoint", "sdxl", "inpaint"),
        "control_v11p_sd15_canny": ("controlnet", "controlnet", "sd15", ""),
        "control_v11f1p_sd15_depth": ("controlnet", "unknown", "unknown", ""),
        # sd-webui-controlnet keeps IP-Adapters in models/ControlNet; content decides the category.
        "ip-adapter_sd15": ("ipadapter", "ip_adapter", "sd15", ""),
        "add_detail": ("loras", "lora", "sd15", ""),
        "vae-ft-mse-840000-ema-pruned": ("vae", "vae", "unknown", ""),
        "easynegative": ("embeddings", "embedding", "sd15", ""),
        "models/antelopev2/glintr100": ("insightface", "unknown", "unknown", ""),
        "openpose/body_pose_model": ("annotators", "unknown", "unknown", ""),
        "hed/ControlNetHED": ("annotators", "unknown", "unknown", ""),
    }
    assert set(entries) == set(expected)
    for name, (category, kind, architecture, variant) in expected.items():
        entry = entries[name]
        identity = entry.identity
        assert (entry.category, identity.kind, identity.architecture, identity.variant) == (
            category,
            kind,
            architecture,
            variant,
        ), name
        assert entry.root == root
        assert entry.path.is_file()
    depth = entries["control_v11f1p_sd15_depth"].identity
    assert depth.details["container"] == "pickle" and "CTRLGEN_ALLOW_PICKLE=1" in depth.details["error"]
    assert entries["sd15/dreamshaper_8"].size_bytes > 2e9
    assert (
        json.loads(json.dumps(entries["sd15/dreamshaper_8"].to_json()))["identity"]["architecture"] == "sd15"
    )


def test_a1111_models_folder_as_root_also_finds_embeddings_next_to_it(tmp_path):
    root = make_a1111(tmp_path / "webui")
    names = set(_by_name(ModelStore([root / "models"])))
    assert {"easynegative", "sd15/dreamshaper_8", "openpose/body_pose_model"} <= names


def test_comfyui_install_is_scanned(tmp_path):
    root = make_comfyui(tmp_path / "ComfyUI")
    for given in (root, root / "models"):
        store = ModelStore([given])
        assert store.resolved_roots()[0].layout == "comfyui"
        entries = _by_name(store)
        assert entries["sdxl/juggernaut"].category == "checkpoints"
        assert entries["union-promax"].identity.variant == "union"
        folder = entries["diffusers_xl_canny"]
        assert (folder.category, folder.identity.kind, folder.identity.architecture) == (
            "controlnet",
            "controlnet",
            "sdxl",
        )
        assert folder.is_folder and folder.path.is_dir() and folder.size_bytes > 1e9
        assert entries["ip-adapter-plus_sdxl_vit-h"].category == "ipadapter"
        assert entries["CLIP-ViT-H-14-laion2B-s32B-b79K"].identity.variant == "vit_h"
        assert entries["CLIP-ViT-H-14-laion2B-s32B-b79K"].category == "clip_vision"
        assert entries["xl/pixel"].category == "loras"
        assert (entries["flux1-dev"].category, entries["flux1-dev"].identity.kind) == ("unet", "transformer")
        assert entries["sdxl_vae"].identity.architecture == "sdxl"  # from its metadata
        assert entries["negative_xl"].category == "embeddings"
        assert entries["models/antelopev2/scrfd_10g_bnkps"].category == "insightface"
        assert entries["ip-adapter"].category == "ipadapter"  # models/instantid, a pickle
        pipeline = entries["tiny-sd15"]
        assert (pipeline.category, pipeline.identity.architecture) == ("diffusers", "sd15")
        assert not any(name.startswith("tiny-sd15/") for name in entries)  # its parts are not models
        if given == root:
            assert entries["lllyasviel/Annotators/ControlNetHED"].category == "annotators"


def test_hf_cache_repos_become_entries(tmp_path):
    cache = make_hf_cache(tmp_path / "hub")
    store = ModelStore([ModelRoot(cache, "hf-cache")])
    entries = _by_name(store)
    pipeline = entries["runwayml/stable-diffusion-v1-5"]
    assert (pipeline.category, pipeline.identity.kind, pipeline.identity.architecture) == (
        "diffusers",
        "checkpoint",
        "sd15",
    )
    assert not any(name.startswith("runwayml/stable-diffusion-v1-5/unet") for name in entries)
    single = entries["runwayml/stable-diffusion-v1-5/v1-5-pruned-emaonly"]  # next to the pipeline's folders
    assert (single.category, single.identity.kind, single.is_folder) == ("checkpoints", "checkpoint", False)
    canny = entries["lllyasviel/control_v11p_sd15_canny"]
    assert (canny.category, canny.identity.architecture, canny.is_folder) == ("controlnet", "sd15", True)
    assert entries["lllyasviel/Annotators/body_pose_model"].category == "annotators"
    assert "lllyasviel/Annotators/stale_only_in_old_revision" not in entries  # refs/main decides
    assert entries["h94/IP-Adapter/models/ip-adapter_sd15"].category == "ipadapter"
    assert entries["h94/IP-Adapter/sdxl_models/ip-adapter_sdxl"].identity.architecture == "sdxl"
    encoder = entries["h94/IP-Adapter/models/image_encoder"]
    assert (encoder.category, encoder.identity.variant) == ("clip_vision", "vit_h")
    assert entries["DIAMONIK7777/antelopev2/glintr100"].category == "insightface"
    # auto layout recognises the cache too, given either the hub folder or HF_HOME
    assert set(_by_name(ModelStore([cache]))) == set(entries)
    assert set(_by_name(ModelStore([tmp_path]))) == set(entries)


def test_find_in_the_hf_cache_by_repo_id(tmp_path):
    store = ModelStore([ModelRoot(make_hf_cache(tmp_path / "hub"), "hf-cache")])
    assert store.find("runwayml/stable-diffusion-v1-5").category == "diffusers"
    assert store.find("v1-5-pruned-emaonly", category=("checkpoints", "diffusers")).category == "checkpoints"
    assert store.find("lllyasviel/control_v11p_sd15_canny", category="controlnet").is_folder
    with pytest.raises(AmbiguousModelError) as caught:
        store.find("h94/IP-Adapter")
    assert "h94/IP-Adapter/models/ip-adapter_sd15" in str(caught.value)
    with pytest.raises(AmbiguousModelError):
        store.find("h94/IP-Adapter", category="ipadapter")  # an SD1.5 and an SDXL one
    assert store.find("h94/IP-Adapter", category="clip_vision").name == "h94/IP-Adapter/models/image_encoder"
    assert store.find("ip-adapter_sd15").name == "h94/IP-Adapter/models/ip-adapter_sd15"
    path = store.find_file("body_pose_model.pth")
    assert path.name == "body_pose_model.pth" and path.read_bytes() == b"pose"
    assert store.find_file("lllyasviel/Annotators/ControlNetHED.pth").read_bytes() == b"hed"
    assert store.find_file("antelopev2/glintr100.onnx", categories=("insightface",)).name == "glintr100.onnx"


def test_symlinks_are_followed_but_never_listed_twice(tmp_path):
    root = tmp_path / "ComfyUI"
    checkpoints = root / "models" / "checkpoints"
    real = write_real_model(checkpoints / "sd15" / "real.safetensors", "checkpoint", "sd15")
    (checkpoints / "alias.safetensors").symlink_to(real)
    (checkpoints / "loop").symlink_to(checkpoints, target_is_directory=True)  # must not recurse forever
    shared = tmp_path / "elsewhere"
    write_real_model(shared / "shared_lora.safetensors", "lora", "sdxl")
    (root / "models" / "loras").mkdir(parents=True)
    (root / "models" / "loras" / "shared").symlink_to(shared, target_is_directory=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.is_symlink())
    store = ModelStore([root])
    entries = store.scan()
    assert sorted(e.name for e in entries) == ["sd15/real", "shared/shared_lora"]
    assert store.find("sd15/real").path.resolve() == real.resolve()  # the one entry, by its real path
    assert store.find("shared_lora").category == "loras"
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.is_symlink())
    assert before == after  # nothing copied or written


def test_find_by_name_stem_filename_path_and_category(tmp_path, monkeypatch):
    root = make_a1111(tmp_path / "webui")
    store = ModelStore([root])
    entry = store.find("sd15/dreamshaper_8")
    assert entry.path == root / "models/Stable-diffusion/sd15/dreamshaper_8.safetensors"
    assert store.find("dreamshaper_8") == entry
    assert store.find("DreamShaper_8") == entry
    assert store.find("dreamshaper_8.safetensors") == entry
    assert store.find("sd15/dreamshaper_8.safetensors") == entry
    assert store.find("sd15\\dreamshaper_8") == entry
    assert store.find(str(entry.path)) == entry
    assert store.find(entry.path) == entry
    monkeypatch.chdir(root / "models")
    assert store.find("Stable-diffusion/sd15/dreamshaper_8.safetensors") == entry
    assert store.find("add_detail", category="lora").category == "loras"
    assert store.find("dreamshaper_8", category=("checkpoints", "diffusers")) == entry
    with pytest.raises(ModelNotFoundError):
        store.find("dreamshaper_8.ckpt")  # a different file type is a different file
    with pytest.raises(ModelNotFoundError):
        store.find("dreamshaper_8", category="loras")
    with pytest.raises(CtrlgenError, match="unknown model category"):
        store.find("dreamshaper_8", category="stable-diffusion-models")
    outside = write_real_model(tmp_path / "downloads" / "new_model.safetensors", "checkpoint", "sdxl")
    loose = store.find(outside)
    assert (loose.source, loose.category, loose.identity.architecture, loose.name) == (
        "path",
        "checkpoints",
        "sdxl",
        "new_model",
    )


def test_ambiguous_references_list_every_candidate(tmp_path):
    root = tmp_path / "ComfyUI"
    first = write_real_model(root / "models/checkpoints/sd15/foo.safetensors", "checkpoint", "sd15")
    second = write_real_model(root / "models/checkpoints/sdxl/foo.safetensors", "checkpoint", "sdxl")
    store = ModelStore([root])
    with pytest.raises(AmbiguousModelError) as caught:
        store.find("foo")
    message = str(caught.value)
    assert "'foo' is ambiguous" in message
    assert "checkpoints/sd15/foo" in message and str(first) in message
    assert "checkpoints/sdxl/foo" in message and str(second) in message
    assert store.find("sdxl/foo").identity.architecture == "sdxl"


def test_same_file_under_two_roots_is_not_ambiguous(tmp_path):
    root = make_a1111(tmp_path / "webui")
    store = ModelStore([root, ModelRoot(root / "models" / "Stable-diffusion", "flat")])
    assert store.find("dreamshaper_8").path.name == "dreamshaper_8.safetensors"


def test_missing_model_says_where_it_looked_and_how_to_get_it(tmp_path):
    a1111 = make_a1111(tmp_path / "webui")
    missing_root = tmp_path / "not-there"
    store = ModelStore([a1111, missing_root])
    with pytest.raises(ModelNotFoundError) as caught:
        store.find("dreamshaper_9", category="checkpoints")
    message = str(caught.value)
    assert "'dreamshaper_9' was not found (checkpoints)" in message
    for resolved in store.resolved_roots():
        for folder in resolved.folders:
            assert str(folder.path) in message
    assert f"{missing_root}  (does not exist)" in message
    assert "Did you mean: 'sd15/dreamshaper_8'?" in message
    assert f"download it into {a1111 / 'models' / 'Stable-diffusion'}" in message
    assert "ctrlgen models pull" in message
    with pytest.raises(ModelNotFoundError) as caught:
        store.find("stabilityai/stable-diffusion-xl-base-1.0")
    assert "`ctrlgen models pull stabilityai/stable-diffusion-xl-base-1.0`" in str(caught.value)
    with pytest.raises(ModelNotFoundError) as caught:
        ModelStore([make_comfyui(tmp_path / "ComfyUI")]).find("ip-adapter-faceid_sd15", category="ipadapter")
    assert f"download it into {tmp_path / 'ComfyUI' / 'models' / 'ipadapter'}" in str(caught.value)


def test_missing_model_with_no_roots_explains_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRLGEN_CONFIG_DIR", str(tmp_path / "cfg"))
    with pytest.raises(ModelNotFoundError) as caught:
        ModelStore().find("dreamshaper_8")
    message = str(caught.value)
    assert "No model folders are configured" in message
    assert f"CTRLGEN_MODEL_ROOTS=/path/to/webui{os.pathsep}/path/to/ComfyUI" in message
    assert str(tmp_path / "cfg" / "config.toml") in message


def test_find_file_finds_annotator_weights_by_conventional_name(tmp_path):
    a1111 = make_a1111(tmp_path / "webui")
    comfy = make_comfyui(tmp_path / "ComfyUI")
    store = ModelStore([a1111, comfy])
    hed = store.find_file("ControlNetHED.pth")
    assert hed == a1111 / "extensions/sd-webui-controlnet/annotator/downloads/hed/ControlNetHED.pth"
    assert store.find_file("lllyasviel/Annotators/ControlNetHED.pth").is_relative_to(comfy)
    assert store.find_file("openpose/body_pose_model.pth").name == "body_pose_model.pth"
    assert store.find_file("missing.pth", alternatives=("body_pose_model.pth",)).name == "body_pose_model.pth"
    assert store.find_file("glintr100.onnx", categories=("insightface",)).name == "glintr100.onnx"
    weight = WeightFile("dpt_hybrid-midas-501f0c75.pt", source="lllyasviel/Annotators")
    with pytest.raises(ModelNotFoundError) as caught:
        store.find_weight(weight)
    message = str(caught.value)
    assert "'dpt_hybrid-midas-501f0c75.pt' was not found (annotators)" in message
    assert "It is published at lllyasviel/Annotators" in message
    assert "`ctrlgen models pull lllyasviel/Annotators dpt_hybrid-midas-501f0c75.pt`" in message  # one file
    assert str(a1111 / "extensions/sd-webui-controlnet/annotator/downloads") in message


def test_identification_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    root = tmp_path / "ComfyUI"
    lora = write_real_model(root / "models/loras/a.safetensors", "lora", "sd15")
    calls = []
    original = models_module.identify_file

    def counting(path, allow_pickle=False):
        calls.append(Path(path).name)
        return original(path, allow_pickle=allow_pickle)

    monkeypatch.setattr(models_module, "identify_file", counting)
    monkeypatch.setattr(models_module, "_IDENTITY_CACHE", {})
    store = ModelStore([root])
    assert store.scan()[0].identity.architecture == "sd15"
    store.scan()
    store.scan(refresh=True)
    ModelStore([root]).scan()
    assert calls == ["a.safetensors"]
    write_real_model(lora, "lora", "sdxl")  # replaced in place: new size and mtime
    assert store.scan(refresh=True)[0].identity.architecture == "sdxl"
    assert calls == ["a.safetensors", "a.safetensors"]


def test_pickles_are_identified_only_when_allowed(tmp_path):
    import torch

    root = tmp_path / "ComfyUI"
    path = root / "models" / "checkpoints" / "odd_lora.pt"
    path.parent.mkdir(parents=True)
    torch.save(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8, 1, 1)}, path
    )
    refused = ModelStore([root]).find("odd_lora")
    assert (refused.category, refused.identity.kind) == ("checkpoints", "unknown")
    allowed = ModelStore([root], allow_pickle=True).find("odd_lora")
    assert (allowed.category, allowed.identity.kind, allowed.identity.architecture) == (
        "loras",
        "lora",
        "sd15",
    )


def test_corrupt_files_are_listed_with_the_reason(tmp_path):
    root = tmp_path / "ComfyUI"
    broken = root / "models" / "checkpoints" / "half_downloaded.safetensors"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    entry = ModelStore([root]).find("half_downloaded")
    assert entry.category == "checkpoints" and entry.identity.kind == "unknown"
    assert "truncated or corrupt" in entry.identity.details["error"]


def test_flat_folder_is_categorised_by_content(tmp_path):
    folder = tmp_path / "my-models"
    write_real_model(folder / "a.safetensors", "controlnet", "sdxl", "union")
    write_real_model(folder / "b.safetensors", "lora", "flux")
    _touch(folder / "yolox_l.onnx")
    entries = _by_name(ModelStore([folder]))
    assert {name: e.category for name, e in entries.items()} == {
        "a": "controlnet",
        "b": "loras",
        "yolox_l": "annotators",
    }


def test_roots_come_from_config_file_and_environment(tmp_path, monkeypatch, reset_plugins):
    a1111 = make_a1111(tmp_path / "webui")
    comfy = make_comfyui(tmp_path / "ComfyUI")
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "config.toml").write_text(f"model_roots = [{json.dumps(str(a1111))}]\n", encoding="utf-8")
    monkeypatch.setenv("CTRLGEN_CONFIG_DIR", str(config))
    monkeypatch.setenv("CTRLGEN_HF_CACHE", "0")
    monkeypatch.delenv("CTRLGEN_MODEL_ROOTS", raising=False)
    plugins.reset()
    store = ModelStore.from_settings()
    assert store.roots == (ModelRoot(a1111),)
    entry = store.find("dreamshaper_8")
    assert entry.source == "configured"

    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", f"{comfy}{os.pathsep}{tmp_path / 'missing'}")
    monkeypatch.setenv("CTRLGEN_ALLOW_PICKLE", "1")
    plugins.reset()
    store = ModelStore.from_settings()
    assert [r.path for r in store.roots] == [comfy, tmp_path / "missing", a1111]
    assert store.allow_pickle
    assert store.find("juggernaut").source == "configured"


def test_hf_cache_source_follows_settings_and_environment(tmp_path, monkeypatch, reset_plugins):
    cache = make_hf_cache(tmp_path / "hub")
    monkeypatch.setenv("CTRLGEN_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("CTRLGEN_MODEL_ROOTS", raising=False)
    monkeypatch.delenv("CTRLGEN_HF_CACHE", raising=False)
    plugins.reset()
    store = ModelStore.from_settings()
    assert store.roots == (ModelRoot(cache, "hf-cache"),)
    assert store.find("runwayml/stable-diffusion-v1-5").source == "huggingface_cache"
    # Explicit settings replace what the built-in sources would read.
    other = make_a1111(tmp_path / "webui")
    explicit = ModelStore.from_settings(Settings(model_roots=(other,), hf_cache=False))
    assert explicit.roots == (ModelRoot(other),)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-cache-here"))
    plugins.reset()
    assert ModelStore.from_settings().roots == ()


def test_a_broken_third_party_source_does_not_hide_the_others(tmp_path, monkeypatch, reset_plugins):
    from ctrlgen.core.plugins.specs import ModelSourceSpec

    monkeypatch.setenv("CTRLGEN_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("CTRLGEN_MODEL_ROOTS", str(make_a1111(tmp_path / "webui")))
    monkeypatch.setenv("CTRLGEN_HF_CACHE", "0")

    def broken():
        raise OSError("network share offline")

    class Plugin:
        @plugins.hookimpl
        def ctrlgen_model_sources(self):
            yield ModelSourceSpec(name="nas", roots=broken)
            yield ModelSourceSpec(name="extra", roots=lambda: [str(tmp_path / "extra")])

    plugins.reset()
    plugins.get_plugin_manager().register(Plugin(), name="third-party")
    store = ModelStore.from_settings()
    assert [r.path for r in store.roots] == [tmp_path / "webui", tmp_path / "extra"]
    assert store.find("dreamshaper_8").source == "configured"


def test_find_file_sees_files_added_after_the_first_scan(tmp_path):
    from ctrlgen.core.models.store import ModelStore
    from ctrlgen.core.plugins.specs import ModelRoot

    downloads = tmp_path / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads"
    (downloads / "hed").mkdir(parents=True)
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    store = ModelStore([ModelRoot(tmp_path)])
    with pytest.raises(ModelNotFoundError):
        store.find_file("ControlNetHED.pth")
    (downloads / "hed" / "ControlNetHED.pth").write_bytes(b"not read by find_file")
    assert store.find_file("ControlNetHED.pth") == downloads / "hed" / "ControlNetHED.pth"
