"""Round trips: diffusers state dict -> original (LDM) keys -> diffusers' own ``from_single_file``
-> the loaded model's state dict equals the original, tensor for tensor."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from ctrlgen.testing import ldm_keys  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def assert_same_state(original, loaded, skip: tuple[str, ...] = ()) -> None:
    want = {k: v for k, v in original.state_dict().items() if not k.startswith(skip)}
    got = {k: v for k, v in loaded.state_dict().items() if not k.startswith(skip)}
    assert set(got) == set(want)
    different = [k for k in want if want[k].shape != got[k].shape or not torch.equal(want[k], got[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def save(state_dict, path) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def sd15_reference(tiny_sd15):
    return diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_sd15.pipeline_dir), local_files_only=True
    )


@pytest.fixture(scope="module")
def sdxl_reference(tiny_sdxl):
    return diffusers.StableDiffusionXLPipeline.from_pretrained(
        str(tiny_sdxl.pipeline_dir), local_files_only=True
    )


def test_sd15_round_trip_through_diffusers_single_file(tmp_path, tiny_sd15, sd15_reference) -> None:
    ref = sd15_reference
    checkpoint = ldm_keys.checkpoint_from_components(
        "sd15", unet=ref.unet, vae=ref.vae, text_encoder=ref.text_encoder
    )
    path = save(checkpoint, tmp_path / "sd15.safetensors")
    loaded = diffusers.StableDiffusionPipeline.from_single_file(
        path, config=str(tiny_sd15.pipeline_dir), local_files_only=True, safety_checker=None
    )
    for name in ("unet", "vae", "text_encoder"):
        assert_same_state(getattr(ref, name), getattr(loaded, name))


def test_sdxl_round_trip_through_diffusers_single_file(tmp_path, tiny_sdxl, sdxl_reference) -> None:
    ref = sdxl_reference
    checkpoint = ldm_keys.checkpoint_from_components(
        "sdxl", unet=ref.unet, vae=ref.vae, text_encoder=ref.text_encoder, text_encoder_2=ref.text_encoder_2
    )
    assert "model.diffusion_model.label_emb.0.0.weight" in checkpoint
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in checkpoint
    path = save(checkpoint, tmp_path / "sdxl.safetensors")
    loaded = diffusers.StableDiffusionXLPipeline.from_single_file(
        path, config=str(tiny_sdxl.pipeline_dir), local_files_only=True
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same_state(getattr(ref, name), getattr(loaded, name))


@pytest.mark.parametrize("model_name", ["unet", "vae"])
def test_component_round_trip_with_model_from_single_file(
    tmp_path, tiny_sd15, sd15_reference, model_name
) -> None:
    convert = {"unet": ldm_keys.unet_to_ldm, "vae": ldm_keys.vae_to_ldm}[model_name]
    original = getattr(sd15_reference, model_name)
    path = save(convert(original), tmp_path / f"{model_name}.safetensors")
    loaded = type(original).from_single_file(
        path, config=str(tiny_sd15.pipeline_dir), subfolder=model_name, local_files_only=True
    )
    assert_same_state(original, loaded)


def test_sd15_controlnet_round_trip(tmp_path, tiny_sd15) -> None:
    original = diffusers.ControlNetModel.from_pretrained(str(tiny_sd15.controlnet_dir), local_files_only=True)
    converted = ldm_keys.controlnet_to_ldm(original)
    assert {"control_model.input_hint_block.14.weight", "control_model.middle_block_out.0.weight"} <= set(
        converted
    )
    assert "control_model.zero_convs.0.0.weight" in converted
    path = save(converted, tmp_path / "control.safetensors")
    loaded = diffusers.ControlNetModel.from_single_file(
        path, config=str(tiny_sd15.controlnet_dir), local_files_only=True
    )
    assert_same_state(original, loaded)


def test_sdxl_controlnet_round_trip(tmp_path, tiny_sdxl) -> None:
    original = diffusers.ControlNetModel.from_pretrained(str(tiny_sdxl.controlnet_dir), local_files_only=True)
    converted = ldm_keys.controlnet_to_ldm(original)
    assert "control_model.label_emb.0.2.bias" in converted
    path = save(converted, tmp_path / "control-xl.safetensors")
    # diffusers' converter does not map an original-layout ControlNet's label_emb (ctrlgen's
    # load_controlnet fills it, see tests/core/test_single_file.py); everything else must match.
    loaded = diffusers.ControlNetModel.from_single_file(
        path, config=str(tiny_sdxl.controlnet_dir), local_files_only=True, low_cpu_mem_usage=False
    )
    assert_same_state(original, loaded, skip=("add_embedding.",))


def test_vae_attention_becomes_conv_weight(sd15_reference) -> None:
    converted = ldm_keys.vae_to_ldm(sd15_reference.vae)
    channels = sd15_reference.vae.config.block_out_channels[-1]
    assert converted["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (channels, channels, 1, 1)
    assert converted["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (
        channels,
        channels,
        1,
        1,
    )
    # decoder levels are numbered from the lowest resolution: up_blocks.0 is up.3
    last = len(sd15_reference.vae.config.block_out_channels) - 1
    assert torch.equal(
        converted[f"first_stage_model.decoder.up.{last}.block.0.conv1.weight"],
        sd15_reference.vae.state_dict()["decoder.up_blocks.0.resnets.0.conv1.weight"],
    )


def test_openclip_fuses_qkv_and_transposes_projection(sdxl_reference) -> None:
    encoder = sdxl_reference.text_encoder_2
    state = encoder.state_dict()
    converted = ldm_keys.openclip_to_ldm(encoder)
    prefix = ldm_keys.SDXL_OPENCLIP_PREFIX
    fused = converted[prefix + "transformer.resblocks.1.attn.in_proj_weight"]
    parts = [state[f"text_model.encoder.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"]
    assert torch.equal(fused, torch.cat(parts))
    assert torch.equal(converted[prefix + "text_projection"], state["text_projection.weight"].T)
    assert converted[prefix + "positional_embedding"].shape == (77, encoder.config.hidden_size)


def test_unknown_keys_fail_loudly() -> None:
    with pytest.raises(ValueError, match="mystery"):
        ldm_keys.unet_to_ldm({"mystery_block.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="VAE key"):
        ldm_keys.vae_to_ldm({"encoder.unknown.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="architecture"):
        ldm_keys.checkpoint_from_components("sd3", unet={}, vae={}, text_encoder={})
