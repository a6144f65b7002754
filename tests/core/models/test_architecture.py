"""Identifying models by tensor names and structure, from header-only files with real shapes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctrlgen.core.errors import ModelFormatError, UnsafeModelError
from ctrlgen.core.models.identify import (
    identify_file,
    identify_folder,
    identify_tensors,
    load_state_dict,
    read_safetensors_header,
)
from ctrlgen.testing.headers import (
    REAL_CASES,
    real_header,
    real_shapes,
    write_header_only_safetensors,
    write_real_model,
)
from ctrlgen.testing.model_shapes import (
    SD15_CONTROLNET,
    SD15_UNET,
    SD_VAE,
    SDXL_UNET,
    diffusers_shapes,
    original_names,
)

_FORMATS = {"original_bare": "original"}


def _case_id(case: tuple[str, ...]) -> str:
    return "-".join(part for part in case if part)


@pytest.mark.parametrize("case", REAL_CASES, ids=_case_id)
def test_real_models_are_identified_from_their_headers(tmp_path, case):
    kind, architecture, variant, layout = case
    path = write_real_model(tmp_path / "model.safetensors", *case)
    identity = identify_file(path)
    assert (identity.kind, identity.architecture, identity.variant) == (kind, architecture, variant)
    assert identity.format == _FORMATS.get(layout, layout)
    assert identity.details["tensors"] == len(real_shapes(*case))
    assert identity.details["container"] == "safetensors"
    assert identity.details["parameters"] > 0


def _shaped(shapes):
    import torch

    return {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}


@pytest.mark.parametrize(
    ("case", "diffusers_type"),
    [
        (("checkpoint", "sd15", ""), "v1"),
        (("checkpoint", "sd15", "inpaint"), "inpainting"),
        (("checkpoint", "sd2", ""), "v2"),
        (("checkpoint", "sd2", "inpaint"), "inpainting_v2"),
        (("checkpoint", "sdxl", ""), "xl_base"),
        (("checkpoint", "sdxl", "inpaint"), "xl_inpaint"),
        (("checkpoint", "sdxl", "refiner"), "xl_refiner"),
        (("checkpoint", "sd3", ""), "sd3"),
        (("transformer", "flux", ""), "flux-dev"),
        (("transformer", "flux", "inpaint"), "flux-fill"),
        (("controlnet", "sd15", ""), "controlnet"),
        (("controlnet", "sdxl", ""), "controlnet_xl_large"),
    ],
    ids=lambda value: value if isinstance(value, str) else _case_id(value),
)
def test_helper_headers_agree_with_diffusers_own_detection(case, diffusers_type):
    """The hand-built and renamed headers are what diffusers' single-file loader expects."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    assert infer_diffusers_model_type(_shaped(real_shapes(*case))) == diffusers_type


def test_original_names_convert_back_to_the_diffusers_models():
    """diffusers' converters turn the original-layout headers back into the real models' keys."""
    from diffusers.loaders import single_file_utils as convert

    checkpoint = _shaped(real_shapes("checkpoint", "sd15"))
    for converted, model, config in (
        (convert.convert_ldm_unet_checkpoint(checkpoint, dict(SD15_UNET)), "unet", SD15_UNET),
        (convert.convert_ldm_vae_checkpoint(checkpoint, dict(SD_VAE)), "vae", SD_VAE),
    ):
        expected = diffusers_shapes(model, config)
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    controlnet = _shaped(real_shapes("controlnet", "sd15", layout="original"))
    converted = convert.convert_controlnet_checkpoint(controlnet, dict(SD15_CONTROLNET))
    assert {k: tuple(v.shape) for k, v in converted.items()} == diffusers_shapes(
        "controlnet", SD15_CONTROLNET
    )
    sdxl = convert.convert_ldm_unet_checkpoint(_shaped(real_shapes("checkpoint", "sdxl")), dict(SDXL_UNET))
    assert {k: tuple(v.shape) for k, v in sdxl.items()} == diffusers_shapes("unet", SDXL_UNET)


def test_header_only_files_are_valid_safetensors(tmp_path):
    from safetensors import safe_open

    header = real_header("controlnet", "sd15")
    path = write_header_only_safetensors(tmp_path / "cn.safetensors", header, {"note": "header only"})
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == set(header)
        assert handle.metadata() == {"note": "header only"}
        name = "control_model.input_hint_block.0.weight"
        assert tuple(handle.get_slice(name).get_shape()) == header[name][1]
        assert float(handle.get_tensor(name).abs().sum()) == 0.0  # the sparse region reads as zeros


# -- structure, not sizes and not file names --------------------------------------------

_TINY_SD15 = {
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 8,
}
_TINY_SD2 = {**_TINY_SD15, "use_linear_projection": True}
_TINY_SDXL = {
    **_TINY_SD15,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80,
    "transformer_layers_per_block": (1, 2),
}


@pytest.mark.parametrize(
    ("config", "architecture", "variant"),
    [
        (_TINY_SD15, "sd15", ""),
        ({**_TINY_SD15, "in_channels": 9}, "sd15", "inpaint"),
        (_TINY_SD2, "sd2", ""),
        (_TINY_SDXL, "sdxl", ""),
        ({**_TINY_SDXL, "in_channels": 9}, "sdxl", "inpaint"),
        ({**_TINY_SDXL, "transformer_layers_per_block": 1}, "sdxl", ""),
    ],
    ids=["sd15", "sd15-inpaint", "sd2", "sdxl", "sdxl-inpaint", "sdxl-shallow"],
)
def test_tiny_models_with_real_names_are_identified_like_real_ones(config, architecture, variant):
    unet = diffusers_shapes("unet", config)
    for shapes, layout in (
        (unet, "diffusers"),
        (original_names("unet", unet, "model.diffusion_model."), "original"),
    ):
        identity = identify_tensors(shapes)
        assert (identity.kind, identity.architecture, identity.variant, identity.format) == (
            "unet",
            architecture,
            variant,
            layout,
        )
        assert identity.details["cross_attention_dim"] == 32


def test_tiny_controlnet_is_identified_in_both_layouts():
    config = {k: v for k, v in _TINY_SD15.items() if k not in ("up_block_types", "sample_size")}
    config["conditioning_embedding_out_channels"] = (16, 32)
    shapes = diffusers_shapes("controlnet", config)
    for candidate in (shapes, original_names("controlnet", shapes, "control_model.")):
        identity = identify_tensors(candidate)
        assert (identity.kind, identity.architecture) == ("controlnet", "sd15")
        assert identity.details["conditioning_channels"] == 3


def test_inpaint_means_nine_input_channels():
    shapes = real_shapes("checkpoint", "sd15")
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert identify_tensors(shapes).variant == ""
    shapes["model.diffusion_model.input_blocks.0.0.weight"] = (320, 9, 3, 3)
    identity = identify_tensors(shapes)
    assert (identity.architecture, identity.variant, identity.details["in_channels"]) == (
        "sd15",
        "inpaint",
        9,
    )


def test_sd1_and_sd2_differ_in_text_encoder_and_projection_layout():
    sd15 = real_shapes("checkpoint", "sd15")
    sd2 = real_shapes("checkpoint", "sd2")
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in sd15)
    assert any(k.startswith("cond_stage_model.model.transformer.resblocks.") for k in sd2)
    proj_in = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert len(sd15[proj_in]) == 4 and len(sd2[proj_in]) == 2
    # An SD1.5 UNet with linear projections is structurally SD2, whatever its width says.
    relinked = {
        k: (v[:2] if k.endswith("proj_in.weight") or k.endswith("proj_out.weight") else v)
        for k, v in sd15.items()
    }
    assert identify_tensors(relinked).architecture == "sd2"


def test_metadata_breaks_ties_the_structure_cannot(tmp_path):
    vae = real_header("vae", "unknown")
    plain = identify_file(write_header_only_safetensors(tmp_path / "a.safetensors", vae))
    assert plain.architecture == "unknown"
    assert plain.details["compatible_architectures"] == ["sd15", "sd2", "sdxl"]
    tagged = write_header_only_safetensors(
        tmp_path / "b.safetensors", vae, {"modelspec.architecture": "stable-diffusion-v1/vae"}
    )
    identity = identify_file(tagged)
    assert (identity.architecture, identity.details["architecture_source"]) == ("sd15", "metadata")
    # Metadata never overrides what the structure says.
    sdxl = real_header("checkpoint", "sdxl")
    lying = write_header_only_safetensors(
        tmp_path / "c.safetensors", sdxl, {"modelspec.architecture": "stable-diffusion-v1"}
    )
    assert identify_file(lying).architecture == "sdxl"


def test_misleading_file_name_is_ignored(tmp_path):
    path = write_real_model(tmp_path / "sdxl_controlnet.safetensors", "vae", "unknown")
    identity = identify_file(path)
    assert identity.kind == "vae"
    assert identity.architecture == "unknown"


def test_random_names_stay_unknown(tmp_path):
    import random

    rng = random.Random(0)
    tensors = {
        f"{rng.choice(['blk', 'layer', 'enc', 'head'])}{i}.{rng.choice(['w', 'weight', 'b'])}": (
            "F32",
            (rng.randint(1, 64), rng.randint(1, 64)),
        )
        for i in range(50)
    }
    identity = identify_file(
        write_header_only_safetensors(tmp_path / "sdxl_inpaint_lora.safetensors", tensors)
    )
    assert (identity.kind, identity.architecture, identity.variant) == ("unknown", "unknown", "")
    assert identity.details["tensors"] == 50
    empty = identify_file(write_header_only_safetensors(tmp_path / "empty.safetensors", {}))
    assert empty.kind == "unknown"


def test_unrecognised_extensions_are_unknown(tmp_path):
    onnx = tmp_path / "glintr100.onnx"
    onnx.write_bytes(b"\x08\x07")
    assert identify_file(onnx).kind == "unknown"
    assert identify_file(onnx).details["container"] == "onnx"


# -- header reading ------------------------------------------------------------------------


def test_a_3_gb_file_is_identified_without_reading_its_data(tmp_path, monkeypatch):
    path = write_real_model(tmp_path / "big.safetensors", "checkpoint", "sd2")
    size = path.stat().st_size
    assert size > 2.4e9
    assert path.stat().st_blocks * 512 < 16 * 2**20  # sparse: the data region takes no disk space
    read_bytes = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        original_read = handle.read

        def read(n=-1):
            data = original_read(n)
            read_bytes.append(len(data))
            return data

        handle.read = read
        return handle

    monkeypatch.setattr(Path, "open", counting_open)
    started = time.perf_counter()
    header = read_safetensors_header(path)
    identity = identify_file(path)
    elapsed = time.perf_counter() - started
    assert identity.architecture == "sd2"
    assert sum(read_bytes) <= 2 * (8 + header.header_bytes)  # two calls, each header only
    assert elapsed < 1.0


def _write_raw(path: Path, header: bytes, data_size: int = 0, declared: int | None = None) -> Path:
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header) if declared is None else declared))
        handle.write(header)
        handle.write(b"\0" * data_size)
    return path


def _corrupt_files(tmp_path: Path) -> dict[str, Path]:
    good = write_real_model(tmp_path / "good.safetensors", "lora", "sd15")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02\x03")
    entry = {"w": {"dtype": "F16", "shape": [4, 4], "data_offsets": [0, 32]}}
    return {
        "too_short": short,
        "absurd_header": _write_raw(tmp_path / "absurd.safetensors", b"{}", declared=2**40),
        "header_past_end": _write_raw(tmp_path / "past.safetensors", b"{}", declared=4096),
        "bad_json": _write_raw(tmp_path / "json.safetensors", b"{not json"),
        "not_an_object": _write_raw(tmp_path / "list.safetensors", b"[1, 2]"),
        "offsets_past_end": _write_raw(tmp_path / "offsets.safetensors", json.dumps(entry).encode(), 8),
        "wrong_byte_count": _write_raw(
            tmp_path / "count.safetensors",
            json.dumps({"w": {"dtype": "F16", "shape": [4, 4], "data_offsets": [0, 8]}}).encode(),
            8,
        ),
        "truncated_download": truncated,
    }


def test_corrupt_or_truncated_files_name_the_file_and_the_fix(tmp_path):
    for label, path in _corrupt_files(tmp_path).items():
        with pytest.raises(ModelFormatError) as caught:
            identify_file(path)
        message = str(caught.value)
        assert str(path) in message, label
        assert "truncated or corrupt" in message, label
        assert "download it again" in message, label


# -- diffusers folders -------------------------------------------------------------------------


def _folder(root: Path, files: dict[str, dict]) -> Path:
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content), encoding="utf-8")
    return root


_UNET = ["diffusers", "UNet2DConditionModel"]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "model_index.json": {"_class_name": "StableDiffusionPipeline", "unet": _UNET},
                "unet/config.json": {},
            },
            ("checkpoint", "sd15", ""),
        ),
        (
            {
                "model_index.json": {"_class_name": "StableDiffusionInpaintPipeline", "unet": _UNET},
                "unet/config.json": {"in_channels": 9, "out_channels": 4, "cross_attention_dim": 768},
            },
            ("checkpoint", "sd15", "inpaint"),
        ),
        (
            {
                "model_index.json": {"_class_name": "StableDiffusionPipeline", "unet": _UNET},
                "unet/config.json": {"use_linear_projection": True, "cross_attention_dim": 1024},
                "scheduler/scheduler_config.json": {"prediction_type": "v_prediction"},
            },
            ("checkpoint", "sd2", "v_prediction"),
        ),
        (
            {
                "model_index.json": {"_class_name": "StableDiffusionPipeline"},
                "text_encoder/config.json": {"hidden_act": "gelu", "hidden_size": 1024},
            },
            ("checkpoint", "sd2", ""),
        ),
        (
            {"model_index.json": {"_class_name": "StableDiffusionXLPipeline", "unet": _UNET}},
            ("checkpoint", "sdxl", ""),
        ),
        (
            {
                "model_index.json": {
                    "_class_name": "StableDiffusionXLImg2ImgPipeline",
                    "requires_aesthetics_score": True,
                    "text_encoder": [None, None],
                }
            },
            ("checkpoint", "sdxl", "refiner"),
        ),
        ({"model_index.json": {"_class_name": "StableDiffusion3Pipeline"}}, ("checkpoint", "sd3", "")),
        ({"model_index.json": {"_class_name": "FluxPipeline"}}, ("checkpoint", "flux", "")),
        (
            {
                "model_index.json": {"_class_name": "FluxFillPipeline"},
                "transformer/config.json": {"in_channels": 384, "out_channels": 64},
            },
            ("checkpoint", "flux", "inpaint"),
        ),
        ({"model_index.json": {"_class_name": "KandinskyPipeline"}}, ("checkpoint", "unknown", "")),
        (
            {"config.json": {"_class_name": "ControlNetModel", "cross_attention_dim": 768}},
            ("controlnet", "sd15", ""),
        ),
        (
            {"config.json": {"_class_name": "ControlNetModel", "addition_embed_type": "text_time"}},
            ("controlnet", "sdxl", ""),
        ),
        ({"config.json": {"_class_name": "ControlNetUnionModel"}}, ("controlnet", "sd15", "union")),
        (
            {"config.json": {"_class_name": "UNet2DConditionModel", "in_channels": 9}},
            ("unet", "sd15", "inpaint"),
        ),
        ({"config.json": {"_class_name": "AutoencoderKL", "latent_channels": 4}}, ("vae", "unknown", "")),
        ({"config.json": {"_class_name": "FluxTransformer2DModel"}}, ("transformer", "flux", "")),
        (
            {
                "config.json": {
                    "architectures": ["CLIPVisionModelWithProjection"],
                    "hidden_size": 1280,
                    "num_hidden_layers": 32,
                }
            },
            ("clip_vision", "unknown", "vit_h"),
        ),
        (
            {"config.json": {"architectures": ["T5EncoderModel"], "d_model": 4096}},
            ("text_encoder", "unknown", "t5xxl"),
        ),
        ({"config.json": {"architectures": ["BertModel"]}}, ("unknown", "unknown", "")),
    ],
    ids=lambda value: "-".join(v for v in value if v) if isinstance(value, tuple) else None,
)
def test_diffusers_folders_are_identified_from_their_configs(tmp_path, files, expected):
    folder = _folder(tmp_path / "model", files)
    identity = identify_file(folder)
    assert (identity.kind, identity.architecture, identity.variant) == expected
    assert identify_folder(folder) == identity


def test_saved_diffusers_configs_are_identified(tmp_path):
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**_TINY_SDXL)
        controlnet = ControlNetModel.from_unet(unet)
    unet.save_config(tmp_path / "unet")
    controlnet.save_config(tmp_path / "controlnet")
    assert identify_folder(tmp_path / "unet").architecture == "sdxl"
    identity = identify_folder(tmp_path / "controlnet")
    assert (identity.kind, identity.architecture) == ("controlnet", "sdxl")


def test_broken_folder_config_is_a_format_error(tmp_path):
    (tmp_path / "model_index.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(ModelFormatError, match="model_index.json"):
        identify_file(tmp_path)


# -- pickles -------------------------------------------------------------------------------------


def test_pickles_are_refused_unless_allowed(tmp_path):
    import torch

    path = tmp_path / "embedding.pt"
    torch.save({"string_to_param": {"*": torch.zeros(2, 768)}, "name": "neg"}, path)
    for call in (lambda: identify_file(path), lambda: load_state_dict(path)):
        with pytest.raises(UnsafeModelError) as caught:
            call()
        message = str(caught.value)
        assert str(path) in message
        assert "pickle" in message and "arbitrary code" in message
        assert "CTRLGEN_ALLOW_PICKLE=1" in message and "allow_pickle = true" in message
        assert "weights_only=True" in message


def test_allowed_pickles_are_read_weights_only(tmp_path):
    import torch

    embedding = tmp_path / "embedding.pt"
    torch.save({"string_to_param": {"*": torch.zeros(2, 768)}, "name": "neg", "step": 3}, embedding)
    identity = identify_file(embedding, allow_pickle=True)
    assert (identity.kind, identity.architecture, identity.details["container"]) == (
        "embedding",
        "sd15",
        "pickle",
    )
    assert identity.details["dtype"] == "F32"

    ip_adapter = {
        "image_proj": {
            "proj.weight": torch.zeros(32, 16),
            "norm.weight": torch.zeros(8),
            "norm.bias": torch.zeros(8),
        },
        "ip_adapter": {f"{i}.to_k_ip.weight": torch.zeros(4, 8) for i in range(1, 32, 2)},
    }
    ip_adapter["ip_adapter"].update({f"{i}.to_v_ip.weight": torch.zeros(4, 8) for i in range(1, 32, 2)})
    bin_path = tmp_path / "ip-adapter.bin"
    torch.save(ip_adapter, bin_path)
    identity = identify_file(bin_path, allow_pickle=True)
    assert (identity.kind, identity.architecture, identity.details["num_tokens"]) == ("ip_adapter", "sd15", 4)

    state = {"state_dict": {"a.weight": torch.arange(6.0).reshape(2, 3)}, "global_step": 10}
    ckpt = tmp_path / "model.ckpt"
    torch.save(state, ckpt)
    loaded = load_state_dict(ckpt, allow_pickle=True)
    assert list(loaded) == ["a.weight"]
    assert torch.equal(loaded["a.weight"], state["state_dict"]["a.weight"])
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_state_dict(legacy, allow_pickle=True)["w"], torch.ones(3))


class _Exploit:
    """Pickles into a call of os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_even_when_allowed(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "control_v11p_sd15_canny.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    assert not marker.exists()
    for call in (
        lambda: identify_file(path, allow_pickle=True),
        lambda: load_state_dict(path, allow_pickle=True),
        lambda: identify_file(path),
    ):
        with pytest.raises(UnsafeModelError) as caught:
            call()
        assert str(path) in str(caught.value)
    with pytest.raises(UnsafeModelError, match="Python objects other than tensors"):
        load_state_dict(path, allow_pickle=True)
    assert not marker.exists(), "the payload ran"


def test_corrupt_pickle_is_a_format_error(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelFormatError, match="broken.pt"):
        load_state_dict(path, allow_pickle=True)


def test_load_state_dict_reads_safetensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 3)}, str(path))
    loaded = load_state_dict(path)
    assert torch.equal(loaded["lora_unet_x.lora_down.weight"], torch.ones(2, 3))
    with pytest.raises(ModelFormatError, match="not .onnx"):
        load_state_dict(tmp_path / "model.onnx")


def test_importing_identification_does_not_import_torch():
    code = (
        "import sys, ctrlgen.core.models.identify, ctrlgen.core.models.store; "
        "heavy = [m for m in ('torch', 'diffusers', 'safetensors', 'transformers') if m in sys.modules]; "
        "print(heavy)"
    )
    src = str(Path(__file__).resolve().parents[3] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]"
