"""Prompt composition: AND and {x} in the parser (properties), and the guidance they give: the
noise prediction the pipeline sees equals the weighted sum computed by hand on the tiny models."""

from __future__ import annotations

import math
import re
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctrlgen.core.engine import composition
from ctrlgen.core.engine.prompts import BRACE_EMPHASIS, EMPHASIS, parse_attention, split_and

WORD = st.text(alphabet=st.sampled_from(list("abcdefg xyz,")), min_size=1, max_size=12).filter(
    lambda s: s.strip() and "AND" not in s)
WEIGHT = st.floats(min_value=-5, max_value=5, allow_nan=False).map(lambda w: round(w, 3))
ANY_TEXT = st.text(alphabet=st.sampled_from(list("ab c(){}[]:|\\.019ANDBREK-")), max_size=50)


# -- the parser -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "expected"), [
    ("a castle AND a dragon :0.8", [("a castle", 1.0), (" a dragon", 0.8)]),
    ("a castle :1.5", [("a castle", 1.5)]),
    ("(a:1.2) AND [b:c:0.5]", [("(a:1.2)", 1.0), (" [b:c:0.5]", 1.0)]),
    ("BAND ANDROID", [("BAND ANDROID", 1.0)]),
    ("x AND y:-0.5", [("x", 1.0), (" y", -0.5)]),
])
def test_and_examples(prompt, expected):
    assert split_and(prompt) == expected


@given(st.lists(st.tuples(WORD, WEIGHT), min_size=1, max_size=5))
def test_and_parts_and_weights_round_trip(parts):
    prompt = " AND ".join(f"{text} :{weight}" for text, weight in parts)
    parsed = split_and(prompt)
    assert [w for _, w in parsed] == [w for _, w in parts]
    assert [t.strip() for t, _ in parsed] == [t.strip() for t, _ in parts]


@given(ANY_TEXT)
def test_and_never_fails_and_splits_at_every_and(prompt):
    parts = split_and(prompt)
    assert len(parts) == len(re.findall(r"\bAND\b", prompt)) + 1
    assert all(math.isfinite(w) for _, w in parts)
    assert not any(re.search(r"\bAND\b", text) for text, _ in parts)


@given(ANY_TEXT)
def test_braces_never_fail_and_weights_stay_positive(prompt):
    for _text, weight in parse_attention(prompt):
        assert weight == -1.0 or weight > 0


@given(WORD.filter(lambda s: s.strip() == s), st.integers(0, 5), st.integers(0, 3))
def test_each_brace_multiplies_by_1_05_and_nests_with_parentheses(word, braces, rounds):
    prompt = "(" * rounds + "{" * braces + word + "}" * braces + ")" * rounds
    ((text, weight),) = parse_attention(prompt)
    assert text == word
    assert weight == pytest.approx(BRACE_EMPHASIS**braces * EMPHASIS**rounds)


def test_brace_examples():
    assert parse_attention("a {b} {{c}}") == [("a ", 1.0), ("b", 1.05), (" ", 1.0), ("c", pytest.approx(1.05**2))]
    assert parse_attention(r"\{x\} stray }") == [("{x} stray }", 1.0)]
    assert parse_attention("{unclosed") == [("unclosed", 1.05)]


# -- the guidance -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd15(tiny_sd15):
    from ctrlgen.core.models import loading

    return loading.load_pipeline_from_folder(tiny_sd15.pipeline_dir)


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl):
    from ctrlgen.core.models import loading

    return loading.load_pipeline_from_folder(tiny_sdxl.pipeline_dir)


def _unet_inputs(pipeline, torch, latents, cond, pooled=None):
    kwargs = {}
    if pooled is not None:  # SDXL: pooled text embeds and the size ids
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(latents.shape[0], 1)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    return pipeline.unet(latents, torch.tensor(500), encoder_hidden_states=cond, return_dict=False, **kwargs)[0]


@pytest.mark.usefixtures("torch_single_thread")
@pytest.mark.parametrize("which", ["sd15", "sdxl"])
@pytest.mark.parametrize("cfg_on", [True, False])
def test_the_noise_prediction_is_the_weighted_sum_by_hand(which, cfg_on, request):
    import torch

    from ctrlgen.core.engine.conditioning import encode
    from ctrlgen.testing.contracts import pipeline_fingerprint

    pipeline = request.getfixturevalue(which)
    prompt, negative = "a castle AND a dragon :0.8 AND (fog:1.3) :-0.3", "blurry"
    plan = composition.plan(pipeline, prompt, negative, steps=4, batch_size=1)
    assert isinstance(plan, composition.ComposedPlan) and plan.pass_count == 3
    sdxl = plan.negative.pooled is not None
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn((1, pipeline.unet.config.in_channels, 8, 8), generator=generator)

    # By hand: each sub-prompt and the negative on its own, then A1111's sum.
    texts = [text for text, _ in split_and(prompt)]
    conds = encode(pipeline, texts + [negative])
    with torch.no_grad():
        eps = [_unet_inputs(pipeline, torch, latents, c.embeds, c.pooled) for c in conds]
    eps_uncond, cfg = eps[-1], 7.0
    expected = eps_uncond + cfg * sum(w * (e - eps_uncond) for e, (_, w) in zip(eps, split_and(prompt), strict=False))

    # Through the hooks: the pipeline's call (negative and pass 1, or pass 1 alone without CFG),
    # then its own CFG line.
    context = types.SimpleNamespace(pipeline=pipeline, step_callbacks=[])
    before = pipeline_fingerprint(pipeline)
    first = plan.stages[0][1]
    with composition.guided(context, plan), torch.no_grad():
        assert len(context.step_callbacks) == 1
        if cfg_on:
            states = torch.cat([plan.negative.embeds, first.embeds])
            pooled = torch.cat([plan.negative.pooled, first.pooled]) if sdxl else None
            both = _unet_inputs(pipeline, torch, torch.cat([latents] * 2), states, pooled)
            uncond, folded = both.chunk(2)
            got = uncond + cfg * (folded - uncond)
        else:  # cfg 1: diffusers runs no negative; the hook adds it
            got = _unet_inputs(pipeline, torch, latents, first.embeds, first.pooled if sdxl else None)
            expected = eps_uncond + sum(w * (e - eps_uncond) for e, (_, w) in zip(eps, split_and(prompt),
                                                                                   strict=False))
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), float((got - expected).abs().max())
    assert context.step_callbacks == []
    assert pipeline_fingerprint(pipeline) == before  # hooks gone
    # and the sum is not trivially pass 1's prediction
    assert not torch.allclose(expected, eps_uncond + cfg * (eps[0] - eps_uncond), atol=1e-3)


def test_a_plain_prompt_keeps_the_plain_plan(sd15):
    from ctrlgen.core.engine.conditioning import PromptPlan

    plan = composition.plan(sd15, "a (castle:1.2), [day:night:0.5]", "blurry", steps=4)
    assert type(plan) is PromptPlan
    assert composition.composed("a castle :0.5") and not composition.composed("a castle")


def test_shares_sum_to_one_and_overlaps_are_scaled():
    left = np.zeros((4, 4), np.float32)
    left[:, :3] = 1.0
    right = np.zeros((4, 4), np.float32)
    right[:, 1:] = 0.5
    root, a, b = composition.shares([left, right])
    assert np.allclose(root + a + b, 1.0)
    assert np.allclose(a[:, 1:3], 1 / 1.5) and np.allclose(b[:, 1:3], 0.5 / 1.5)  # overlap: sum 1.5 -> 1
    assert np.allclose(root[:, 3], 0.5) and np.allclose(root[:, 0], 0.0)


@pytest.mark.usefixtures("torch_single_thread")
def test_a_job_with_a_zero_weight_part_matches_the_plain_prompt(engine):
    from ctrlgen.core.engine.jobs import parse_job

    job = {"model": "tiny-sd15", "prompt": "a castle", "negative_prompt": "blurry", "seed": 5, "steps": 3,
           "width": 64, "height": 64}
    plain = np.asarray(engine.run(parse_job(job)).images[0], np.int16)
    zero = np.asarray(engine.run(parse_job({**job, "prompt": "a castle AND a dragon :0"})).images[0], np.int16)
    both = np.asarray(engine.run(parse_job({**job, "prompt": "a castle AND a dragon :0.8"})).images[0], np.int16)
    assert np.abs(plain - zero).max() <= 1  # the same sum, batched differently
    assert np.abs(plain - both).max() > 8


def test_prompt_editing_inside_and_parts_makes_stages_of_every_pass(sd15):
    import torch

    from ctrlgen.core.engine.conditioning import encode

    plan = composition.plan(sd15, "[a cat:a dog:2] AND a hat :0.5", "", steps=4)
    assert [last for last, _ in plan.stages] == [2, 4] and plan.pass_count == 2
    cat, dog, hat = encode(sd15, ["a cat", "a dog", "a hat"])
    assert torch.equal(plan.stages[0][1].embeds, cat.embeds) and torch.equal(plan.stages[1][1].embeds, dog.embeds)
    assert all(torch.equal(passes[0].embeds, hat.embeds) for passes in plan.passes)
    assert plan.weights.flatten().tolist() == [1.0, 0.5]
    assert [plan.stage_for_step(step) for step in (1, 2, 3, 4)] == [0, 0, 1, 1]


@pytest.mark.usefixtures("torch_single_thread")
def test_the_hook_follows_the_prompt_editing_stage(sd15):
    import torch

    from ctrlgen.core.engine.conditioning import encode

    plan = composition.plan(sd15, "a hat AND [a cat:a dog:2] :0.5", "blurry", steps=4)
    hat, cat, dog, negative = encode(sd15, ["a hat", "a cat", "a dog", "blurry"])
    latents = torch.randn((1, sd15.unet.config.in_channels, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eps = {name: _unet_inputs(sd15, torch, latents, c.embeds) for name, c in
               (("hat", hat), ("cat", cat), ("dog", dog), ("negative", negative))}
    context = types.SimpleNamespace(pipeline=sd15, step_callbacks=[])
    with composition.guided(context, plan), torch.no_grad():
        (on_step_end,) = context.step_callbacks
        for step, second in ((0, "cat"), (1, "dog")):  # after step index 1, steps 3-4 follow: "a dog"
            on_step_end(None, step, None, {})
            stage = plan.stage_for_step(step + 2)
            states = torch.cat([plan.negative.embeds, plan.stages[stage][1].embeds])
            uncond, folded = _unet_inputs(sd15, torch, torch.cat([latents] * 2), states).chunk(2)
            u = eps["negative"]
            expected = u + (eps["hat"] - u) + 0.5 * (eps[second] - u)
            assert torch.allclose(folded, expected, atol=1e-5), (step, float((folded - expected).abs().max()))
