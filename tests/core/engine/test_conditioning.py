"""Weighted prompts, long prompts, BREAK, clip skip and prompt editing on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrlgen.core.engine import engine as engine_module
from ctrlgen.core.engine.conditioning import encode, plan_prompts
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.models import loading as single_file

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def sd15(tiny_sd15):
    return single_file.load_pipeline_from_folder(tiny_sd15.pipeline_dir)


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl):
    return single_file.load_pipeline_from_folder(tiny_sdxl.pipeline_dir)


def test_plain_prompt_encodes_like_diffusers_sd15(sd15):
    kwargs = plan_prompts(sd15, "a photo of a cat", "blurry", 4).call_kwargs()
    positive, negative = sd15.encode_prompt("a photo of a cat", "cpu", 1, True, negative_prompt="blurry")
    assert torch.equal(kwargs["prompt_embeds"], positive) and torch.equal(kwargs["negative_prompt_embeds"], negative)


def test_plain_prompt_encodes_like_diffusers_sdxl(sdxl):
    kwargs = plan_prompts(sdxl, "a photo of a cat", "", 4).call_kwargs()
    reference = sdxl.encode_prompt("a photo of a cat", device="cpu", negative_prompt=None)  # what __call__ passes
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for name, expected in zip(names, reference, strict=True):
        assert torch.equal(kwargs[name], expected), name
    assert not kwargs["negative_prompt_embeds"].any()  # SDXL zeroes an empty negative prompt


def test_weight_one_changes_nothing_and_weights_scale_their_tokens(sd15):
    plain, neutral, weighted = encode(sd15, ["a cat on a mat", "a (cat:1.0) on a mat", "a (cat:1.5) on a mat"])
    assert torch.equal(plain.embeds, neutral.embeds)
    ratio = (weighted.embeds / plain.embeds)[0]  # (77, dim)
    cat_position = 2  # BOS, "a", "cat"
    others = torch.cat([ratio[:cat_position], ratio[cat_position + 1 :]])
    factor = others.mean()
    assert torch.allclose(others, factor, atol=1e-4)  # mean restoration: one common factor
    assert torch.allclose(ratio[cat_position], 1.5 * factor, atol=1e-4)


def test_long_prompts_and_break_make_chunks_and_negatives_match(sd15, sdxl):
    long_prompt = ", ".join(["a red cat"] * 25)  # 100 tokens: two chunks, nothing truncated
    for pipeline in (sd15, sdxl):
        long, short, broken = encode(pipeline, [long_prompt, "dog", "a cat BREAK a hat"])
        assert long.chunks == short.chunks == broken.chunks == 2
        assert long.embeds.shape[1] == 154
    only_cat, broken = encode(sd15, ["a cat", "a cat BREAK a hat"])
    assert torch.equal(broken.embeds[:, :77], only_cat.embeds[:, :77])  # BREAK closes the first chunk


def test_clip_skip_uses_earlier_layers(sd15, sdxl):
    tokens = sd15.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = sd15.text_encoder(tokens, output_hidden_states=True).hidden_states
    norm = getattr(sd15.text_encoder, "text_model", sd15.text_encoder).final_layer_norm
    (skip2,) = encode(sd15, ["a cat"], clip_skip=2)
    assert torch.equal(skip2.embeds, norm(hidden[-2]))
    (skip1,), (skip2,) = encode(sdxl, ["a cat"], clip_skip=1), encode(sdxl, ["a cat"], clip_skip=2)
    assert not torch.equal(skip1.embeds, skip2.embeds) and torch.equal(skip1.pooled, skip2.pooled)


def image(engine, prompt, model="tiny-sd15", steps=4):
    job = parse_job({"model": model, "prompt": prompt, "seed": 5, "steps": steps, "width": 64, "height": 64})
    return np.asarray(engine.run(job).images[0])


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_prompt_editing_switches_at_the_right_step(engine, model, monkeypatch):
    cat, dog = image(engine, "a cat", model), image(engine, "a dog", model)
    assert np.array_equal(image(engine, "[a cat:a dog:4]", model), cat)  # never switches in 4 steps
    assert np.array_equal(image(engine, "[a cat:a dog:0.0]", model), dog)  # switched from the start
    switches = []
    original = engine_module._stage_tensors

    def spy(pipe, plan, stage):
        switches.append(stage)
        return original(pipe, plan, stage)

    monkeypatch.setattr(engine_module, "_stage_tensors", spy)
    steps = []
    job = parse_job({"model": model, "prompt": "[a cat:a dog:2]", "seed": 5, "steps": 4, "width": 64, "height": 64})
    mixed = np.asarray(engine.run(job, on_event=lambda e: steps.append((e.kind, len(switches)))).images[0])
    # the switch happens in the callback of step 2, so steps 3 and 4 see "a dog"
    assert [count for kind, count in steps if kind == "progress"] == [0, 1, 1, 1]
    assert switches == [1]
    assert not np.array_equal(mixed, cat) and not np.array_equal(mixed, dog)


def test_weighted_prompt_changes_the_image(engine):
    assert not np.array_equal(image(engine, "a (cat:1.6)"), image(engine, "a cat"))
