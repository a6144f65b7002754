"""The offline CLIP tokenizer must tokenize exactly like OpenAI's/open_clip's own tokenizer."""

from __future__ import annotations

import json

import pytest

from ctrlgen.core.errors import ModelFormatError
from ctrlgen.core.models import tokenizer as tk

pytest.importorskip("open_clip")
pytest.importorskip("transformers")

PROMPTS = [
    "a photo of a cat",
    "A Photo of a CAT!!",
    "masterpiece, (best quality:1.2), 1girl, <lora:detail:0.6> [blue|red] hair",
    "naïve café — 東京の夜景 🙂 don't can't we'll",
    "  leading and trailing   spaces\nand\tnewlines ",
    "numbers 1234567 and punctuation ,.;:!?'\"()[]{}",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="module")
def clip_tokenizer(cache):
    return tk.load_clip_tokenizer("clip", cache)


@pytest.fixture(scope="module")
def reference():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def test_known_ids_match_open_clip(clip_tokenizer, reference) -> None:
    ids = clip_tokenizer("a photo of a cat")["input_ids"]
    assert ids == [reference.sot_token_id, *reference.encode("a photo of a cat"), reference.eot_token_id]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokenizes_like_open_clip(clip_tokenizer, reference, prompt: str) -> None:
    expected = [reference.sot_token_id, *reference.encode(prompt), reference.eot_token_id]
    assert clip_tokenizer(prompt)["input_ids"] == expected


def test_padding_and_truncation_match_open_clip_tokenize(cache) -> None:
    import open_clip

    openclip_tokenizer = tk.load_clip_tokenizer("openclip", cache)
    long_prompt = "a very long prompt about mountains " * 30
    for prompt in ("a photo", long_prompt):
        ours = openclip_tokenizer(prompt, padding="max_length", max_length=77, truncation=True)["input_ids"]
        theirs = open_clip.tokenize([prompt])[0].tolist()  # pads with 0 ('!'), ends with EOT when cut
        assert ours[:76] == theirs[:76]
        assert len(ours) == 77
    assert openclip_tokenizer.pad_token_id == 0


def test_clip_kind_pads_with_end_of_text(clip_tokenizer) -> None:
    ids = clip_tokenizer("a photo", padding="max_length", max_length=77)["input_ids"]
    assert ids[:4] == [49406, 320, 1125, 49407]
    assert set(ids[4:]) == {49407}
    assert clip_tokenizer.model_max_length == 77
    assert len(clip_tokenizer) == tk.VOCAB_SIZE


def test_vocabulary_matches_open_clip_encoder(reference) -> None:
    vocab, merges = tk.clip_vocabulary()
    assert len(vocab) == tk.VOCAB_SIZE and len(merges) == 48894
    # same ids as open_clip's table, whose special tokens are spelled <start_of_text>/<end_of_text>
    renamed = {"<start_of_text>": tk.BOS_TOKEN, "<end_of_text>": tk.EOS_TOKEN}
    assert {renamed.get(k, k): v for k, v in reference.encoder.items()} == vocab


def test_cached_folder_is_reused_and_complete(cache) -> None:
    first = tk.clip_tokenizer_dir("clip", cache)
    stamp = (first / "vocab.json").stat().st_mtime_ns
    assert tk.clip_tokenizer_dir("clip", cache) == first
    assert (first / "vocab.json").stat().st_mtime_ns == stamp
    assert {p.name for p in first.iterdir()} == {
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert json.loads((first / "tokenizer_config.json").read_text())["tokenizer_class"] == "CLIPTokenizer"
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")], "no temporary folders left"


def test_unknown_kind_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="'gpt2'"):
        tk.clip_tokenizer_dir("gpt2", tmp_path)  # type: ignore[arg-type]


def test_missing_open_clip_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(tk.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFormatError, match="open-clip-torch"):
        tk.bpe_vocabulary_path()


def test_cache_dir_override(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CTRLGEN_CACHE_DIR", str(tmp_path / "c"))
    assert tk.default_cache_dir() == tmp_path / "c"
