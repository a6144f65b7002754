"""Textual-inversion embeddings: A1111 names in the prompt, SD1.5 and SDXL files, exact restoration."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ctrlgen.core.engine.engine import Engine, GenerationContext
from ctrlgen.core.engine.jobs import parse_job
from ctrlgen.core.errors import UnsafeModelError
from ctrlgen.core.models.store import ModelStore
from ctrlgen.core.plugins.specs import ModelRoot
from ctrlgen.testing.contracts import AdapterContract, pipeline_fingerprint

pytestmark = pytest.mark.usefixtures("torch_single_thread")
EMBEDDINGS = [{"type": "embeddings"}]



@pytest.fixture
def engine(addon_engine):
    return addon_engine


def job(architecture="sd15", **extra):
    return parse_job({"model": f"tiny-{architecture}", "prompt": "a cat", "seed": 6, "steps": 2, "width": 64,
                      "height": 64, **extra})


def run(engine, **extra):
    return np.asarray(engine.run(job(**extra)).images[0]).astype(np.int16)


def run_without_embeddings(engine, monkeypatch, **extra):
    """The same job with the (always-on) embeddings plugin blocked, as a user can block it."""
    from ctrlgen.core.plugins import manager as plugins

    monkeypatch.setenv("CTRLGEN_DISABLE_PLUGINS", "ctrlgen.adapters.embeddings")
    plugins.reset()
    try:
        return run(engine, **extra)
    finally:
        monkeypatch.delenv("CTRLGEN_DISABLE_PLUGINS")
        plugins.reset()


def tokenizer_state(pipe):
    names = [n for n in ("tokenizer", "tokenizer_2") if getattr(pipe, n, None) is not None]
    probe = "a <tinyneg> tinyneg photo, (detailed:1.2) <tinyneg>_1"
    return [(len(getattr(pipe, n)), getattr(pipe, n).get_vocab(), getattr(pipe, n)(probe).input_ids) for n in names]


class TestEmbeddingsContract(AdapterContract):
    adapter = "embeddings"

    @pytest.fixture
    def contract_model_root(self, addon_model_root):
        return addon_model_root

    def adapter_job(self, image):
        return {"model": "tiny-sd15", "prompt": "a cat", "negative_prompt": "TinyNeg, blurry", "seed": 1, "steps": 2,
                "width": 64, "height": 64, "adapters": EMBEDDINGS}


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_an_embedding_named_in_the_negative_prompt_is_used(engine, architecture, monkeypatch):
    plain = run_without_embeddings(engine, monkeypatch, architecture=architecture, negative_prompt="tinyneg")
    base = engine.load_pipeline(engine.resolve_checkpoint(job(architecture)))
    before, tokenizers = pipeline_fingerprint(base), tokenizer_state(base)
    used = run(engine, architecture=architecture, negative_prompt="tinyneg", adapters=EMBEDDINGS)
    assert np.abs(used - plain).mean() > 0.5
    assert pipeline_fingerprint(base) == before
    assert tokenizer_state(base) == tokenizers
    always_on = run(engine, architecture=architecture, negative_prompt="tinyneg")  # not listed: still used
    assert np.array_equal(always_on, used)


def test_names_match_as_words_in_any_case(engine, monkeypatch):
    used = run(engine, negative_prompt="tinyneg", adapters=EMBEDDINGS)
    assert np.array_equal(run(engine, negative_prompt="ugly, TINYNEG", adapters=EMBEDDINGS),
                          run(engine, negative_prompt="ugly, tinyneg", adapters=EMBEDDINGS))
    weighted = run(engine, negative_prompt="(TinyNeg:1.3)", adapters=EMBEDDINGS)
    without = run_without_embeddings(engine, monkeypatch, negative_prompt="(TinyNeg:1.3)")
    assert not np.array_equal(weighted, used) and not np.array_equal(weighted, without)
    # a longer word is not the embedding's name
    assert np.array_equal(run(engine, negative_prompt="tinynegative", adapters=EMBEDDINGS),
                          run(engine, negative_prompt="tinynegative"))


def test_prompts_are_rewritten_to_the_tokens_while_attached(engine, addon_model_root):
    from ctrlgen.adapters.embeddings import attach_embeddings

    request = job(prompt="tinystyle portrait", negative_prompt="(TinyNeg:1.2), <lora:tinyneg:1>")
    base = engine.load_pipeline(engine.resolve_checkpoint(request))
    store = ModelStore([ModelRoot(addon_model_root.root)], allow_pickle=True)
    context = GenerationContext(request, Engine(store=store, device="cpu"), base, "sd15", {}, 64, 64,
                                prompt=request.prompt, negative_prompt=request.negative_prompt)
    rows = base.text_encoder.get_input_embeddings().num_embeddings
    with attach_embeddings(context, [{}]):
        assert context.prompt == "<tinystyle> portrait"  # the pickled A1111 .pt (string_to_param), one vector
        assert context.negative_prompt == "(<tinyneg> <tinyneg>_1:1.2), <lora:tinyneg:1>"  # two vectors
        assert len(base.tokenizer) == rows + 3
        assert base.text_encoder.get_input_embeddings().num_embeddings == rows + 3
    assert base.text_encoder.get_input_embeddings().num_embeddings == rows
    assert base.text_encoder.config.vocab_size == rows


def test_pickled_embeddings_need_permission(engine):
    with pytest.raises(UnsafeModelError, match="tinystyle.pt is a pickle"):
        engine.run(job(prompt="tinystyle", adapters=EMBEDDINGS))


def test_an_embedding_for_another_architecture_is_skipped(engine, caplog):
    # tinyxl exists for SDXL only; A1111 skips it on SD1.5, and so do we (with a warning)
    plain = run(engine, prompt="tinyxl")
    with caplog.at_level(logging.WARNING, logger="ctrlgen.adapters.embeddings"):
        skipped = run(engine, prompt="tinyxl", adapters=EMBEDDINGS)
    assert np.array_equal(skipped, plain)
    assert "tinyxl.safetensors does not fit this sd15 model; skipped" in caplog.text


@pytest.mark.weights
def test_real_easynegative():
    import os

    roots = [root for root in os.environ.get("CTRLGEN_WEIGHTS_ROOTS", "").split(os.pathsep) if root]
    store = ModelStore(roots)
    checkpoints = [e for e in store.entries("checkpoints") if e.identity.architecture == "sd15"]
    names = {e.name.rsplit("/", 1)[-1].lower() for e in store.entries("embeddings")}
    if not checkpoints or "easynegative" not in names:
        pytest.skip("needs a real SD1.5 checkpoint and EasyNegative in the embeddings folder")
    engine = Engine(store=store)
    request = {"model": str(checkpoints[0].path), "prompt": "a cat", "negative_prompt": "easynegative", "seed": 1,
               "steps": 4, "width": 256, "height": 256}
    plain = np.asarray(engine.run(parse_job(request)).images[0])
    used = np.asarray(engine.run(parse_job({**request, "adapters": EMBEDDINGS})).images[0])
    assert not np.array_equal(plain, used)
