"""Architecture dispatch is a hook: a plugin teaches the engine SD3 without touching ctrlgen."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgen.core.engine.engine import Engine
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import JobError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.manager import get_registry
from ctrlgen.core.plugins.specs import ArchitectureSpec, ModelRoot

SD3_PLUGIN = """
from ctrlgen import hookimpl
from ctrlgen.core.plugins.specs import ArchitectureSpec

@hookimpl
def ctrlgen_architectures():
    yield ArchitectureSpec(
        name="sd3",
        pipelines={("txt2img", False): "StableDiffusion3Pipeline",
                   ("img2img", False): "StableDiffusion3Img2ImgPipeline"},
        description="Stable Diffusion 3 (plugin)",
        prompt_weighting=False,
        a1111_samplers=False,
        latent_rgb=(((0.3, 0.2, 0.1), (0.1, 0.3, 0.2), (0.2, 0.1, 0.3), (-0.2, -0.2, -0.2)), (0.0, 0.0, 0.0)),
        native_size=1024,
    )
"""


@pytest.fixture(scope="module")
def sd3_root(tmp_path_factory):
    """A tiny SD3 pipeline (MMDiT, two CLIP encoders, no T5) saved as a ComfyUI diffusers folder."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from ctrlgen.core.models.tokenizer import load_clip_tokenizer

    def clip(seed):
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37,
            num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77, vocab_size=49408,
            projection_dim=32, hidden_act="gelu"))

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=64, pooled_projection_dim=64, out_channels=4)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(4,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), layers_per_block=1, latent_channels=4,
                        norm_num_groups=1, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    from ctrlgen.testing.tiny import _randomize

    _randomize(transformer, 3, zero_init_std=0.02)  # fresh modules hold zero/constant tensors
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=clip(1), tokenizer=load_clip_tokenizer("clip"),
        text_encoder_2=clip(2), tokenizer_2=load_clip_tokenizer("clip"),
        text_encoder_3=None, tokenizer_3=None)
    root = tmp_path_factory.mktemp("sd3root")
    pipe.save_pretrained(root / "models" / "diffusers" / "tiny-sd3")
    return root


def job(**extra):
    return parse_job({"model": "tiny-sd3", "prompt": "a red cube", "seed": 5, "steps": 2, "width": 64,
                      "height": 64, "cfg_scale": 3.0} | extra)


def test_builtin_architectures_come_through_the_hook():
    registry = get_registry("architectures")
    assert {"sd15", "sd2", "sdxl"} <= {spec.name for spec in registry}
    assert registry.get("sdxl").pipeline_class("inpaint", "union").__name__ == (
        "StableDiffusionXLControlNetUnionInpaintPipeline")
    with pytest.raises(JobError, match="sd15 models cannot do inpaint with a union ControlNet"):
        registry.get("sd15").pipeline_class("inpaint", "union")
    with pytest.raises(ValueError, match="needs a \\('txt2img', False\\) pipeline"):
        ArchitectureSpec("broken", {("img2img", False): "X"})
    with pytest.raises(ValueError, match="must be \\(task, controlnet\\)"):
        ArchitectureSpec("broken", {("txt2img", False): "X", ("outpaint", False): "Y"})


def test_an_unknown_architecture_is_refused_with_the_way_out(sd3_root, torch_single_thread):
    engine = Engine(store=ModelStore([ModelRoot(sd3_root)]), device="cpu")
    with pytest.raises(JobError, match=r"is a sd3 model: ctrlgen cannot run sd3 models; it runs sd15, sd2, sdxl "
                                       r"\(other architectures come as plugins through the ctrlgen_architectures"):
        engine.run(job())


def test_a_plugin_architecture_runs_jobs(make_distribution, sd3_root, torch_single_thread):
    make_distribution("ctrlgen-sd3", "0.1", {"sd3": "cg_sd3"}, {"cg_sd3": SD3_PLUGIN})
    assert get_registry("architectures").get("sd3").description == "Stable Diffusion 3 (plugin)"
    engine = Engine(store=ModelStore([ModelRoot(sd3_root)]), device="cpu")
    events = []
    result = engine.run(job(batch_size=2), on_event=events.append, preview=True)
    assert type(next(iter(engine._pipelines.values()))).__name__ == "StableDiffusion3Pipeline"
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert [e.data["step"] for e in events if e.kind == "progress"] == [1, 2]
    assert [e.data["image"].shape for e in events if e.kind == "preview"] == [(256, 256, 3)] * 2
    again = engine.run(job(batch_size=2))
    assert np.array_equal(np.asarray(again.images[1]), np.asarray(result.images[1]))  # seeded
    other = engine.run(job(prompt="a blue sphere"))
    assert not np.array_equal(np.asarray(other.images[0]), np.asarray(result.images[0]))  # the text reaches it
    with pytest.raises(JobError, match="sd3 models cannot do txt2img with ControlNet"):
        engine.run(job(image=None, control=[{"model": "x", "image": "x.png"}]))
