"""Warming the code paths a first job runs, without knowing its model.

A fresh process pays more than imports on its first job: PyTorch's first calls of each
operator (dispatch set-up, oneDNN's primitive set-up, SDPA's kernel choice), diffusers' and
transformers' first model constructions and forward passes, the tokenizer's first build. The
server's warm phase (``Warmup._warm``) runs :func:`warm_code_paths` before the first job:
one two-step txt2img on a throwaway SD1.5-shaped pipeline with a few thousand random weights
(shapes unlike any real model's, so nothing here stands in for a model's own load), built in
memory from the offline CLIP tokenizer and the bundled scheduler config, on the CPU. It takes
a fraction of a second and leaves nothing behind.
"""

from __future__ import annotations

from typing import Any


def tiny_pipeline(pipeline_class: Any) -> Any:
    """A throwaway SD1.5-shaped ``pipeline_class`` (txt2img) with tiny random weights."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ctrlgen.core.models.configs import bundled_config_files
    from ctrlgen.core.models.tokenizer import load_clip_tokenizer

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                    out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                    attention_head_dim=4, norm_num_groups=8)
        vae = AutoencoderKL(block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8,
                            latent_channels=4, sample_size=64, scaling_factor=0.18215)
        text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=16,
                                                    intermediate_size=24, num_attention_heads=2, num_hidden_layers=1,
                                                    max_position_embeddings=77, vocab_size=49408, projection_dim=16,
                                                    hidden_act="quick_gelu"))
    finally:
        torch.random.set_rng_state(generator_state)
    config = bundled_config_files("sd15")["scheduler/scheduler_config.json"]
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    components = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": load_clip_tokenizer("clip"),
                  "scheduler": scheduler, "safety_checker": None, "feature_extractor": None,
                  "requires_safety_checker": False, "image_encoder": None}
    expected, optional = pipeline_class._get_signature_keys(pipeline_class)
    return pipeline_class(**{k: v for k, v in components.items() if k in expected or k in optional})


def warm_code_paths(device: Any = "cpu", pipeline_class: Any | None = None) -> float:
    """Import the engine's job-time modules and run a throwaway two-step 64² txt2img on
    ``device`` (see the module's docstring); its seconds."""
    import importlib
    import time

    import torch

    started = time.perf_counter()
    for name in ("composition", "conditioning", "prompts", "detail", "cancel", "samplers", "preprocess", "memory",
                 "masks", "regions", "pasted", "preview"):
        importlib.import_module(f"ctrlgen.core.engine.{name}")
    if pipeline_class is None:
        from ctrlgen.core.engine import tasks

        pipeline_class = tasks.pipeline_class("sd15", "txt2img")
    pipe = tiny_pipeline(pipeline_class).to(device)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        pipe(prompt="warm", negative_prompt="", num_inference_steps=2, height=64, width=64, guidance_scale=5.0,
             generator=torch.Generator("cpu").manual_seed(0), output_type="pil")
    return time.perf_counter() - started
