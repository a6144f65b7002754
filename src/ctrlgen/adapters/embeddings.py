"""Textual-inversion embeddings with A1111's semantics: name one in the prompt and it is used.

Every embedding in the model store's ``embeddings`` folders is known by its file name
(``embeddings/EasyNegative.safetensors`` -> ``easynegative``); one whose name appears as a word
in the prompt or negative prompt (any case, also inside ``(easynegative:1.2)``) is loaded with
diffusers' ``load_textual_inversion`` as the token ``<name>`` (``<name>_1``, ... for more
vectors) and the word is replaced by those tokens. SD1.5/SD2 files (``emb_params``,
``string_to_param``, diffusers' one-tensor files) go into the text encoder; SDXL files
(``clip_l`` + ``clip_g``) into both encoders. An embedding made for another architecture is
skipped, as A1111 does. After the job the tokenizers and text encoders are exactly as before:
the same tokenizer backend and embedding module objects, holding the same tensors.
"""

from __future__ import annotations

import contextlib
import logging
import re

from ctrlgen.core.plugins.manager import hookimpl
from ctrlgen.core.plugins.specs import AdapterSpec

log = logging.getLogger("ctrlgen.adapters.embeddings")
_TAG = r"<[^<>]*>"  # extra-network tags (<lora:name:1>) are not prompt words


def _by_name(store) -> dict[str, list]:
    entries: dict[str, list] = {}
    for entry in store.entries("embeddings"):
        if entry.identity.kind == "embedding" or entry.identity.details.get("container") == "pickle":
            entries.setdefault(entry.name.rsplit("/", 1)[-1].lower(), []).append(entry)
    return entries


def _words(names) -> re.Pattern[str]:
    ordered = sorted(names, key=len, reverse=True)  # the longest name wins where names overlap
    return re.compile(rf"{_TAG}|(?<!\w)(?:{'|'.join(map(re.escape, ordered))})(?!\w)", re.IGNORECASE)


def _vectors(context, entries) -> dict[str, object] | None:
    """Vectors per text encoder (``text_encoder``/``text_encoder_2``) from the first file that fits."""
    from ctrlgen.core.models.identify import load_state_dict

    pipe = context.pipeline
    widths = {name: getattr(pipe, name).get_input_embeddings().embedding_dim
              for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None) is not None}
    engine, allow_pickle = getattr(context, "engine", None), context.store.allow_pickle
    for entry in entries:
        def read(path=entry.path):
            return load_state_dict(path, allow_pickle=allow_pickle)

        # Read once per engine and file (path, mtime, size); the vectors are only read from.
        tensors = engine.load_file(entry.path, f"embedding:{allow_pickle}", read) if hasattr(engine, "load_file") \
            else read()
        if "clip_l" in tensors and "clip_g" in tensors:
            found = {"text_encoder": tensors["clip_l"], "text_encoder_2": tensors["clip_g"]}
        else:
            key = "emb_params" if "emb_params" in tensors else next(
                (k for k in tensors if k.startswith("string_to_param.")), next(iter(tensors)) if len(tensors) == 1 else None)
            found = {"text_encoder": tensors[key]} if key else {}
        found = {name: vector.reshape(-1, vector.shape[-1]) for name, vector in found.items()}
        if found and found.keys() == widths.keys() and all(found[n].shape[-1] == widths[n] for n in widths):
            return found
    shown = ", ".join(str(entry.path) for entry in entries)
    log.warning("embedding %s does not fit this %s model; skipped", shown, context.architecture)
    return None


class _Loaded:
    """One tokenizer/text-encoder pair as it was before tokens were added, to put it back exactly.

    A fast tokenizer keeps everything in its Rust backend: the job gets a copy of it to add
    tokens to, and the untouched original goes back on exit (``unload_textual_inversion``
    rebuilds it through JSON instead, about a second per tokenizer per job). The text encoder
    gets its own embedding module and tensor back (unload would build a new module).
    """

    def __init__(self, tokenizer, text_encoder) -> None:
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.module = text_encoder.get_input_embeddings()
        self.data = self.module.weight.data
        self.attributes = (self.module.num_embeddings, self.module.padding_idx)  # resizing changes them
        self.vocab_size = text_encoder.config.vocab_size
        self.tokens: list[str] = []
        self.backend = getattr(tokenizer, "_tokenizer", None)
        if self.backend is not None:
            tokenizer._tokenizer = type(self.backend).from_str(self.backend.to_str())

    def restore(self, pipe) -> None:
        if self.backend is not None:
            self.tokenizer._tokenizer = self.backend
        elif self.tokens:  # a slow (pure Python) tokenizer
            pipe.unload_textual_inversion(self.tokens, tokenizer=self.tokenizer, text_encoder=self.text_encoder)
        self.module.weight.data = self.data
        self.module.num_embeddings, self.module.padding_idx = self.attributes
        self.text_encoder.set_input_embeddings(self.module)
        self.text_encoder.config.vocab_size = self.vocab_size


@contextlib.contextmanager
def attach_embeddings(context, uses):
    """Load the embeddings the prompts name, rewrite the prompts to their tokens; unload on exit."""
    from ctrlgen.core.errors import JobError

    available = _by_name(context.store)
    pattern = _words(available) if available else None
    named = {m.group(0).lower() for text in (context.prompt, context.negative_prompt)
             for m in (pattern.finditer(text) if pattern else ()) if not m.group(0).startswith("<")}
    pipe = context.pipeline
    slots: dict[str, _Loaded] = {}
    replacements: dict[str, str] = {}
    try:
        for name in sorted(named):
            vectors = _vectors(context, available[name])
            if vectors is None:
                continue
            token = f"<{name}>"
            for encoder, tensor in vectors.items():
                tokenizer = getattr(pipe, "tokenizer" if encoder == "text_encoder" else "tokenizer_2")
                if encoder not in slots:
                    slots[encoder] = _Loaded(tokenizer, getattr(pipe, encoder))
                slot = slots[encoder]
                try:
                    pipe.load_textual_inversion(tensor, token=token, tokenizer=tokenizer,
                                                text_encoder=slot.text_encoder)
                except ValueError as exc:
                    raise JobError(f"embedding {name!r} could not be loaded: {exc}") from exc
                count = tensor.shape[0]
                slot.tokens += [token] + [f"{token}_{i}" for i in range(1, count)]
            replacements[name] = " ".join([token] + [f"{token}_{i}" for i in range(1, count)])
        if replacements:
            rewrite = _words(replacements)

            def replace(match: re.Match[str]) -> str:
                return replacements.get(match.group(0).lower(), match.group(0))

            context.prompt = rewrite.sub(replace, context.prompt)
            context.negative_prompt = rewrite.sub(replace, context.negative_prompt)
        yield context
    finally:
        for slot in slots.values():
            slot.restore(pipe)


@hookimpl
def ctrlgen_adapters():
    yield AdapterSpec(
        name="embeddings",
        attach=attach_embeddings,
        description="Textual-inversion embeddings: any embedding named in the prompt or negative prompt is used",
        architectures=("sd15", "sd2", "sdxl"),
        requires=("diffusers",),
        always=True,
    )
