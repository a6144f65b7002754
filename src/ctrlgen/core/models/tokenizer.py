"""A real CLIP tokenizer, built offline from the BPE vocabulary that ships in open-clip-torch.

Stable Diffusion's text encoders (OpenAI CLIP ViT-L/14, OpenCLIP ViT-H/14 and ViT-bigG/14) all
use the same 49,408-token byte-level BPE vocabulary. Hugging Face normally downloads it as
``vocab.json`` + ``merges.txt`` from the hub; here it is derived from
``open_clip/bpe_simple_vocab_16e6.txt.gz`` (the file OpenAI published with CLIP), so a
:class:`transformers.CLIPTokenizer` can be created with no network.

The token ids follow OpenAI's ``SimpleTokenizer``: 256 byte symbols, the same 256 with the
end-of-word marker ``</w>``, 48,894 merges, then ``<|startoftext|>`` (49406) and
``<|endoftext|>`` (49407). Two flavours differ only in the padding token:

* ``"clip"`` pads with ``<|endoftext|>`` (SD1.5 and SDXL's first tokenizer);
* ``"openclip"`` pads with ``!`` (id 0), as ``open_clip.tokenize`` does (SD2 and SDXL's
  ``tokenizer_2``).

Folders are written once into the cache (``CTRLGEN_CACHE_DIR``, else the user cache folder)
and reused; writing is atomic, so concurrent processes never see half a folder.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from ctrlgen.core.config import cache_dir as default_cache_dir
from ctrlgen.core.errors import ModelFormatError

TokenizerKind = Literal["clip", "openclip"]

TOKENIZER_FORMAT_VERSION = "1"
"""Bump when the files written here change, so stale cache folders are not reused."""

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_NUM_MERGES = 49152 - 256 - 2  # OpenAI's SimpleTokenizer keeps this many merges
_PAD_TOKENS: dict[str, str] = {"clip": EOS_TOKEN, "openclip": "!"}


def bpe_vocabulary_path() -> Path:
    """Where open-clip-torch keeps OpenAI's BPE file (found without importing open_clip/torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFormatError(
            "building a CLIP tokenizer offline needs the BPE vocabulary bundled with open-clip-torch, "
            "which is not installed; install it with: pip install 'ctrlgen[engine]' (or open-clip-torch)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BPE_FILENAME
        if candidate.is_file():
            return candidate
    raise ModelFormatError(
        f"open-clip-torch is installed but {BPE_FILENAME} is missing from it "
        f"({', '.join(spec.submodule_search_locations)}); reinstall open-clip-torch"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table (byte-level BPE works on these characters)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


@lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], tuple[str, ...]]:
    """``(vocab, merges)`` exactly as Hugging Face's CLIP ``vocab.json``/``merges.txt`` hold them."""
    path = bpe_vocabulary_path()
    try:
        lines = gzip.open(path).read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ModelFormatError(
            f"{path} is not a readable gzip BPE file ({exc}); reinstall open-clip-torch"
        ) from None
    merges = tuple(line for line in lines[1 : _NUM_MERGES + 1])
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or len(merges) != _NUM_MERGES:
        raise ModelFormatError(
            f"{path} gave {len(vocab)} tokens and {len(merges)} merges, not {VOCAB_SIZE} and {_NUM_MERGES}; "
            "reinstall open-clip-torch"
        )
    return vocab, merges


def tokenizer_config(kind: TokenizerKind = "clip") -> dict[str, Any]:
    """The ``tokenizer_config.json`` written for ``kind`` (as in the SD1.5/SDXL hub repos)."""
    if kind not in _PAD_TOKENS:
        raise ValueError(f"tokenizer kind {kind!r} is not one of {sorted(_PAD_TOKENS)}")
    return {
        "tokenizer_class": "CLIPTokenizer",
        "add_prefix_space": False,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": _PAD_TOKENS[kind],
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
    }


def write_clip_tokenizer(folder: Path, kind: TokenizerKind = "clip") -> Path:
    """Write a loadable CLIP tokenizer folder (``vocab.json``, ``merges.txt``, configs) at ``folder``."""
    config = tokenizer_config(kind)
    vocab, merges = clip_vocabulary()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder


def clip_tokenizer_dir(kind: TokenizerKind = "clip", cache_dir: Path | None = None) -> Path:
    """A cached tokenizer folder for ``kind``, written on first use."""
    tokenizer_config(kind)  # validates kind before touching the disk
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = base / "tokenizers" / f"{kind}-v{TOKENIZER_FORMAT_VERSION}"
    if (target / "tokenizer_config.json").is_file():
        return target
    return publish_folder(target, lambda tmp: write_clip_tokenizer(tmp, kind))


def copy_clip_tokenizer(folder: Path, kind: TokenizerKind = "clip", cache_dir: Path | None = None) -> Path:
    """Place a tokenizer for ``kind`` at ``folder`` (e.g. a pipeline's ``tokenizer/``), from the cache."""
    source = clip_tokenizer_dir(kind, cache_dir)
    shutil.copytree(source, folder, dirs_exist_ok=True)
    return Path(folder)


def load_clip_tokenizer(kind: TokenizerKind = "clip", cache_dir: Path | None = None) -> Any:
    """A :class:`transformers.CLIPTokenizer` for ``kind``, built offline."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir(kind, cache_dir)), local_files_only=True)


def publish_folder(target: Path, build: Any) -> Path:
    """Build a folder in a temporary sibling with ``build(tmp)`` and rename it into place.

    If another process published ``target`` first, its folder wins and ours is discarded.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is as readable as any other
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
