"""Offline loading of single-file checkpoints, ControlNets and diffusers folders."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from ctrlgen.core.errors import ModelFormatError, ModelNotFoundError, UnsafeModelError  # noqa: E402
from ctrlgen.core.models import loading as sf  # noqa: E402
from ctrlgen.testing import ldm_keys  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (HF_HUB_OFFLINE alone would hide it)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def generate(pipe, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    result = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        generator=generator,
        output_type="np",
        height=64,
        width=64,
        **kwargs,
    )
    return result.images[0]


def own_memory(pipe) -> None:
    """Copy every weight into freshly allocated (64-byte aligned) memory."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                tensor.data = tensor.data.clone()


def assert_same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- tiny models, end to end


@pytest.mark.parametrize("family", ["tiny_sd15", "tiny_sdxl"])
def test_folder_and_single_file_give_the_same_image(request, family, no_network) -> None:
    tiny = request.getfixturevalue(family)
    from_folder = sf.load_pipeline_from_folder(tiny.pipeline_dir)
    from_file = sf.load_pipeline_from_single_file(
        tiny.checkpoint, tiny.architecture, cache_dir=tiny.cache_dir
    )
    assert type(from_file).__name__ == tiny.pipeline_cls_name == type(from_folder).__name__
    assert from_file.scheduler.config == from_folder.scheduler.config
    image_folder, image_file = generate(from_folder), generate(from_file)
    assert image_folder.shape == (64, 64, 3)
    assert image_folder.std() > 0.01, "a constant image means the pipeline did not really run"
    np.testing.assert_allclose(image_folder, image_file, atol=1e-4)
    # Bit-identical once the weights sit at the same memory alignment: a folder's tensors are
    # memory-mapped at arbitrary file offsets, and CPU kernels pick SIMD paths by alignment.
    for pipe in (from_folder, from_file):
        own_memory(pipe)
    np.testing.assert_array_equal(generate(from_folder), generate(from_file))


@pytest.mark.parametrize("family", ["tiny_sd15", "tiny_sdxl"])
def test_controlnet_loads_from_every_layout(request, family, no_network) -> None:
    tiny = request.getfixturevalue(family)
    reference = sf.load_controlnet(tiny.controlnet_dir, tiny.architecture)
    for path in (tiny.controlnet_checkpoint, tiny.controlnet_diffusers_checkpoint):
        assert_same_state(reference, sf.load_controlnet(path, tiny.architecture, cache_dir=tiny.cache_dir))


@pytest.mark.parametrize("family", ["tiny_sd15", "tiny_sdxl"])
def test_controlnet_pipeline_from_single_files_runs(request, family, no_network) -> None:
    from PIL import Image

    tiny = request.getfixturevalue(family)
    controlnet = sf.load_controlnet(tiny.controlnet_checkpoint, tiny.architecture, cache_dir=tiny.cache_dir)
    pipe = sf.load_pipeline_from_single_file(
        tiny.checkpoint,
        tiny.architecture,
        tiny.controlnet_pipeline_cls_name,
        cache_dir=tiny.cache_dir,
        controlnet=controlnet,
    )
    hint = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8"))
    image = generate(pipe, image=hint)
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    black = generate(pipe, image=Image.new("RGB", (64, 64)))
    assert np.abs(image - black).max() > 1 / 255, "the control image must steer the result"


@pytest.mark.parametrize("family", ["tiny_sd15", "tiny_sdxl"])
def test_extra_tensors_of_real_files_are_tolerated(request, family, tmp_path, no_network) -> None:
    """Training leftovers real checkpoints carry: schedule buffers, EMA counters, CLIP
    position ids, OpenCLIP's logit scale."""
    from safetensors.torch import load_file, save_file

    tiny = request.getfixturevalue(family)
    state = load_file(tiny.checkpoint)
    state.update(
        {
            "alphas_cumprod": torch.rand(1000),
            "betas": torch.rand(1000),
            "model_ema.decay": torch.tensor(0.9999),
            "model_ema.num_updates": torch.tensor(0, dtype=torch.int32),
        }
    )
    if tiny.architecture == "sdxl":
        state["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[
            None
        ]
        state["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6)
    else:
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    path = tmp_path / "trained.safetensors"
    save_file(state, str(path))
    shutil.copyfile(sf.sidecar_path(tiny.checkpoint), sf.sidecar_path(path))
    pipe = sf.load_pipeline_from_single_file(path, tiny.architecture, cache_dir=tiny.cache_dir)
    reference = sf.load_pipeline_from_single_file(
        tiny.checkpoint, tiny.architecture, cache_dir=tiny.cache_dir
    )
    assert_same_state(pipe.unet, reference.unet)
    assert_same_state(pipe.text_encoder, reference.text_encoder)


def test_torch_dtype_is_applied(tiny_sd15) -> None:
    pipe = sf.load_pipeline_from_single_file(
        tiny_sd15.checkpoint, "SD1.5", torch_dtype=torch.bfloat16, cache_dir=tiny_sd15.cache_dir
    )
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="nope.safetensors"):
        sf.load_pipeline_from_single_file(tmp_path / "nope.safetensors", "sd15")


def test_pickles_are_refused_unless_allowed(tmp_path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeModelError, match="model.ckpt"):
        sf.load_pipeline_from_single_file(path, "sd15")


def test_truncated_file(tmp_path, tiny_sd15) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes(tiny_sd15.checkpoint.read_bytes()[:100_000])
    with pytest.raises(ModelFormatError, match="truncated"):
        sf.load_pipeline_from_single_file(path, "sd15")


def test_controlnet_given_as_checkpoint_is_named(tiny_sd15) -> None:
    with pytest.raises(ModelFormatError, match="looks like a ControlNet"):
        sf.load_pipeline_from_single_file(tiny_sd15.controlnet_checkpoint, "sd15")


def test_checkpoint_given_as_controlnet_is_refused(tiny_sd15) -> None:
    with pytest.raises(ModelFormatError, match="not a ControlNet"):
        sf.load_controlnet(tiny_sd15.checkpoint, "sd15")


def test_wrong_size_without_sidecar_names_file_and_fix(tmp_path, tiny_sd15, no_network) -> None:
    lonely = tmp_path / "custom.safetensors"
    shutil.copyfile(tiny_sd15.checkpoint, lonely)  # the tiny file without its sidecar: real SD1.5 config
    with pytest.raises(
        ModelFormatError, match=r"custom\.safetensors.*sidecar config \(custom\.config\.json\)"
    ):
        sf.load_pipeline_from_single_file(lonely, "sd15", cache_dir=tmp_path)


def test_unknown_architecture() -> None:
    with pytest.raises(ModelFormatError, match="flux"):
        sf.normalize_architecture("flux")
    assert sf.normalize_architecture("SD1.5") == "sd15"
    assert sf.normalize_architecture("sdxl_base") == "sdxl"
    assert sf.normalize_architecture("sd15-inpaint") == "sd15"


def test_bad_sidecar(tmp_path, tiny_sd15) -> None:
    path = tmp_path / "m.safetensors"
    shutil.copyfile(tiny_sd15.checkpoint, path)
    sf.sidecar_path(path).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFormatError, match="not a ctrlgen sidecar"):
        sf.load_pipeline_from_single_file(path, "sd15", cache_dir=tmp_path)
    sf.sidecar_path(path).write_text(json.dumps({"format": sf.SIDECAR_FORMAT, "files": {"../evil.json": {}}}))
    with pytest.raises(ModelFormatError, match="relative"):
        sf.read_sidecar(path)


def test_not_a_pipeline_folder(tmp_path) -> None:
    with pytest.raises(ModelFormatError, match="no model_index.json"):
        sf.load_pipeline_from_folder(tmp_path)


# ---------------------------------------------------------------- sidecars and bundled configs


def test_sidecar_packs_only_configs(tiny_sd15) -> None:
    files = sf.read_sidecar(tiny_sd15.checkpoint)
    assert set(files) == {
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer_config.json",
    }
    folder = sf.materialize_config_folder(files, tiny_sd15.cache_dir)
    assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()
    assert sf.materialize_config_folder(files, tiny_sd15.cache_dir) == folder  # content-addressed, reused


def test_bundled_configs_get_offline_tokenizers(tmp_path) -> None:
    folder = sf.materialize_config_folder(sf.bundled_config_files("sdxl"), tmp_path)
    pad = {
        name: json.loads((folder / name / "tokenizer_config.json").read_text())["pad_token"]
        for name in ("tokenizer", "tokenizer_2")
    }
    assert pad == {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}
    sd2 = sf.materialize_config_folder(sf.bundled_config_files("sd2"), tmp_path)
    assert json.loads((sd2 / "tokenizer" / "tokenizer_config.json").read_text())["pad_token"] == "!"


def _fake_checkpoint(path, tensors) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def test_file_facts_adjust_the_bundled_config(tmp_path) -> None:
    inpaint = tmp_path / "inpaint.safetensors"
    _fake_checkpoint(inpaint, {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 9, 3, 3)})
    files = sf.pipeline_config_files(inpaint, "sd15-inpaint")
    assert files["unet/config.json"]["in_channels"] == 9
    assert files["scheduler/scheduler_config.json"]["prediction_type"] == "epsilon"

    vpred = tmp_path / "vpred.safetensors"
    _fake_checkpoint(vpred, {"model.diffusion_model.out.2.bias": torch.zeros(4), "v_pred": torch.zeros(0)})
    assert sf.pipeline_config_files(vpred, "sdxl")["scheduler/scheduler_config.json"]["prediction_type"] == (
        "v_prediction"
    )

    a1111 = tmp_path / "sd21.safetensors"
    _fake_checkpoint(a1111, {"model.diffusion_model.out.2.bias": torch.zeros(4)})
    (tmp_path / "sd21.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    files = sf.pipeline_config_files(a1111, "sd2")
    assert files["scheduler/scheduler_config.json"]["prediction_type"] == "v_prediction"
    assert files["unet/config.json"]["sample_size"] == 96  # the 768 px v model
    assert sf.pipeline_config_files(a1111, "sd2-eps")["unet/config.json"]["sample_size"] == 64


def test_sd2_v_model_detected_from_weights(tmp_path) -> None:
    probe = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    wide, narrow = tmp_path / "wide.safetensors", tmp_path / "narrow.safetensors"
    _fake_checkpoint(wide, {probe: torch.linspace(-1, 1, 320)})
    _fake_checkpoint(narrow, {probe: torch.zeros(320)})
    assert (
        sf.pipeline_config_files(wide, "sd2")["scheduler/scheduler_config.json"]["_class_name"]
        == "DDIMScheduler"
    )
    assert sf.pipeline_config_files(narrow, "sd2")["unet/config.json"]["sample_size"] == 64


# ---------------------------------------------------------------- real-size architectures, on the meta device


def _real_components(name: str) -> dict:
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    files = sf.bundled_config_files(name)
    with init_empty_weights():
        parts = {
            "unet": diffusers.UNet2DConditionModel.from_config(files["unet/config.json"]),
            "vae": diffusers.AutoencoderKL.from_config(files["vae/config.json"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(files["text_encoder/config.json"])),
        }
        if "text_encoder_2/config.json" in files:
            config = CLIPTextConfig.from_dict(files["text_encoder_2/config.json"])
            parts["text_encoder_2"] = CLIPTextModelWithProjection(config)
    return parts


def _shapes(state_dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


# Facts about the published checkpoints: parameter counts, tensor counts per component, and
# a few tensor names with shapes (the upsampler names are the ones ComfyUI-GGUF uses to detect
# original-layout SD1/SDXL UNets).
REAL = {
    "sd15": {
        "params": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
        "tensors": 686 + 248 + 196,
        "model_type": "v1",
        "shapes": {
            "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
            "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
            "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
            "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
            "model.diffusion_model.input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
            "model.diffusion_model.middle_block.1.proj_out.weight": (1280, 1280, 1, 1),
            "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
            "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
            "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
            "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
            "model.diffusion_model.time_embed.0.weight": (1280, 320),
            "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
            "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
            "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
            "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
            "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
            "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
            "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
            "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        },
    },
    "sd2-v": {
        "params": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
        "tensors": 686 + 248 + 23 * 12 + 4,
        "model_type": "v2",
        "shapes": {
            "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
            "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
            "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
            "cond_stage_model.model.positional_embedding": (77, 1024),
        },
    },
    "sdxl": {
        "params": {
            "unet": 2_567_463_684,
            "vae": 83_653_863,
            "text_encoder": 123_060_480,
            "text_encoder_2": 694_659_840,
        },
        "tensors": 1680 + 248 + 196 + 32 * 12 + 5,
        "model_type": "xl_base",
        "shapes": {
            "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
            "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
            "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
            "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
            "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
            "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
            "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
            "conditioner.embedders.1.model.text_projection": (1280, 1280),
            "conditioner.embedders.1.model.positional_embedding": (77, 1280),
        },
    },
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_bundled_configs_build_the_real_architectures(name) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    facts = REAL[name]
    parts = _real_components(name)
    assert {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()} == facts["params"]
    checkpoint = ldm_keys.checkpoint_from_components({"sd2-v": "sd2"}.get(name, name), **parts)
    assert len(checkpoint) == facts["tensors"]
    shapes = _shapes(checkpoint)
    assert {k: shapes.get(k) for k in facts["shapes"]} == facts["shapes"]
    # diffusers' own detector recognises the key set as the real architecture
    assert infer_diffusers_model_type(checkpoint) == facts["model_type"]


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_real_size_keys_convert_back_through_diffusers(name) -> None:
    """Original names from the bundled configs go back through diffusers' converters to exactly
    the model's own names and shapes (at full size, on the meta device)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    files = sf.bundled_config_files(name)
    parts = _real_components(name)
    checkpoint = ldm_keys.checkpoint_from_components(name, **parts)
    unet = convert_ldm_unet_checkpoint(checkpoint, files["unet/config.json"])
    vae = convert_ldm_vae_checkpoint(checkpoint, files["vae/config.json"])
    assert _shapes(unet) == _shapes(parts["unet"].state_dict())
    assert _shapes(vae) == _shapes(parts["vae"].state_dict())


@pytest.mark.parametrize("name", ["sd15", "sd2", "sdxl"])
def test_real_controlnet_configs(name) -> None:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    files = sf.bundled_config_files(sf.CONTROLNET_CONFIGS[name])
    with init_empty_weights():
        controlnet = diffusers.ControlNetModel.from_config(files["config.json"])
    converted = ldm_keys.controlnet_to_ldm(controlnet)
    shapes = _shapes(converted)
    assert shapes["control_model.input_hint_block.0.weight"] == (16, 3, 3, 3)
    assert shapes["control_model.input_hint_block.14.weight"] == (320, 256, 3, 3)
    assert shapes["control_model.zero_convs.0.0.weight"] == (320, 320, 1, 1)
    assert shapes["control_model.middle_block_out.0.weight"] == (1280, 1280, 1, 1)
    back = convert_controlnet_checkpoint(converted, files["config.json"])
    expected = _shapes(controlnet.state_dict())
    if name == "sdxl":  # diffusers does not map label_emb back; ctrlgen's loader does
        expected = {k: v for k, v in expected.items() if not k.startswith("add_embedding.")}
    else:
        assert (
            sum(p.numel() for p in controlnet.parameters()) == {"sd15": 361_279_120, "sd2": 364_228_240}[name]
        )
    assert _shapes(back) == expected
