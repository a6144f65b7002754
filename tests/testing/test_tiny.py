"""The tiny-model kit: what it writes, where, and that it is built once."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from ctrlgen.core.models.loading import read_safetensors_header, sidecar_path  # noqa: E402
from ctrlgen.testing import tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize("family", ["tiny_sd15", "tiny_sdxl"])
def test_everything_is_written(request, family) -> None:
    model = request.getfixturevalue(family)
    assert (model.pipeline_dir / "model_index.json").is_file()
    assert (model.pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (model.controlnet_dir / "diffusion_pytorch_model.safetensors").is_file()
    for path in model.single_files:
        assert path.is_file() and sidecar_path(path).is_file()
    assert model.folder.name.startswith(f"{model.architecture}-v{tiny.TINY_VERSION}-")
    assert not list(model.folder.parent.glob(".*")), "no half-built temporary folders remain"


def test_sd15_checkpoint_uses_original_key_names(tiny_sd15) -> None:
    keys = set(read_safetensors_header(tiny_sd15.checkpoint))
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in keys  # SD1.5 layout: plain last level
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    control = set(read_safetensors_header(tiny_sd15.controlnet_checkpoint))
    assert all(k.startswith("control_model.") for k in control)
    assert "control_model.input_hint_block.14.bias" in control


def test_sdxl_checkpoint_uses_original_key_names(tiny_sdxl) -> None:
    keys = set(read_safetensors_header(tiny_sdxl.checkpoint))
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "conditioner"}
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in keys  # upsampler after attention
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias" in keys
    control = read_safetensors_header(tiny_sdxl.controlnet_diffusers_checkpoint)
    assert "controlnet_cond_embedding.conv_in.weight" in control


def test_components_are_deterministic(tiny_model_cache) -> None:
    first = tiny.tiny_sd15_components(cache_dir=tiny_model_cache)
    second = tiny.tiny_sd15_components(cache_dir=tiny_model_cache)
    for name in ("unet", "vae", "text_encoder"):
        a, b = first[name].state_dict(), second[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert first["tokenizer"]("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("family", ["tiny_sd15", "tiny_sdxl"])
def test_no_tensor_is_constant(request, family) -> None:
    """Like trained weights, so a round trip that swapped two same-shaped tensors would fail."""
    from safetensors.torch import load_file

    model = request.getfixturevalue(family)
    for path in (model.checkpoint, model.controlnet_checkpoint):
        constant = [k for k, v in load_file(path).items() if v.numel() > 1 and v.float().std() == 0]
        assert not constant, f"{path.name}: {constant[:3]}"


def test_second_write_reuses_the_build(tiny_model_cache, tiny_sd15) -> None:
    stamp = tiny_sd15.checkpoint.stat().st_mtime_ns
    again = tiny.write_tiny_sd15(tiny_model_cache)
    assert again == tiny_sd15
    assert again.checkpoint.stat().st_mtime_ns == stamp


def test_tiny_text_encoder_fits_the_real_tokenizer(tiny_sd15) -> None:
    sidecar = json.loads(sidecar_path(tiny_sd15.checkpoint).read_text())
    text_encoder = sidecar["files"]["text_encoder/config.json"]
    assert text_encoder["vocab_size"] == 49408 and text_encoder["max_position_embeddings"] == 77


def test_a1111_root(tiny_model_root, tiny_sd15) -> None:
    root = tiny_model_root
    assert root.layout == "a1111" and root.models_dir == root.root / "models"
    checkpoint = root.checkpoints["sd15"]
    assert checkpoint == root.models_dir / "Stable-diffusion" / "tiny-sd15.safetensors"
    assert root.controlnets["sdxl"] == root.models_dir / "ControlNet" / "tiny-controlnet-sdxl.safetensors"
    assert sidecar_path(checkpoint).is_file() and sidecar_path(root.controlnets["sd15"]).is_file()
    assert checkpoint.stat().st_ino == tiny_sd15.checkpoint.stat().st_ino, "hard link, not a second copy"
    assert root.diffusers_folders == {}
    assert root.checkpoint == checkpoint and root.controlnet == root.controlnets["sd15"]


def test_comfyui_root(tiny_comfyui_root) -> None:
    root = tiny_comfyui_root
    models = root.models_dir
    assert root.checkpoints["sdxl"] == models / "checkpoints" / "tiny-sdxl.safetensors"
    assert root.controlnets["sd15"] == models / "controlnet" / "tiny-controlnet-sd15.safetensors"
    assert (root.diffusers_folders["sd15"] / "model_index.json").is_file()
    assert root.diffusers_folders["sdxl"] == models / "diffusers" / "tiny-sdxl"


def test_model_root_rejects_unknown_layout_and_architecture(tmp_path, tiny_model_cache) -> None:
    with pytest.raises(ValueError, match="invokeai"):
        tiny.write_model_root(tmp_path, "invokeai", cache_dir=tiny_model_cache)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sd3"):
        tiny.write_model_root(tmp_path, "a1111", architectures=("sd3",), cache_dir=tiny_model_cache)


def test_model_root_defaults_to_sd15_and_is_idempotent(tmp_path, tiny_model_cache, tiny_sd15) -> None:
    first = tiny.write_model_root(tmp_path, cache_dir=tiny_model_cache)
    again = tiny.write_model_root(tmp_path, cache_dir=tiny_model_cache)
    assert first == again and set(first.checkpoints) == {"sd15"}
    assert sorted(p.name for p in (tmp_path / "models" / "Stable-diffusion").iterdir()) == [
        "tiny-sd15.config.json",
        "tiny-sd15.safetensors",
    ]
