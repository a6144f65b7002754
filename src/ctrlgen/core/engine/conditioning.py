"""Prompt text -> text-encoder embeddings with A1111 semantics.

- Attention weights from :mod:`ctrlgen.core.engine.prompts` scale each token's embedding; the
  chunk's mean is then restored (A1111's normalisation), so weights shift emphasis
  without changing the overall magnitude.
- Prompts longer than 75 tokens, or split with ``BREAK``, become several 77-token chunks
  encoded separately and concatenated along the sequence (no truncation).
- ``clip_skip`` uses A1111's numbering: 1 = the last layer, 2 = the one before, ...
- SDXL: both encoders' penultimate hidden states (shifted by ``clip_skip``) side by side,
  the pooled embedding from the second encoder's first chunk; an empty negative prompt is
  zeros when the model asks for it (``force_zeros_for_empty_prompt``), as in diffusers.

A prompt without weights, under 75 tokens, encodes exactly as diffusers' ``encode_prompt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctrlgen.core.engine.prompts import BREAK_MARK, parse_attention, prompt_schedule

CHUNK = 75


@dataclass
class Conditioning:
    """Embeddings for one prompt text (batch of 1)."""

    embeds: Any  # (1, 77 * chunks, dim)
    pooled: Any = None  # SDXL (1, dim)

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // (CHUNK + 2)


def _tokens_and_weights(tokenizer: Any, text: str) -> list[tuple[list[int], list[float]]]:
    """Chunks of at most 75 (token, weight) pairs; BREAK closes a chunk early."""
    chunks: list[tuple[list[int], list[float]]] = [([], [])]
    for piece, weight in parse_attention(text):
        if (piece, weight) == BREAK_MARK:
            chunks.append(([], []))
            continue
        ids = tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False).input_ids
        for token in ids:
            if len(chunks[-1][0]) == CHUNK:
                chunks.append(([], []))
            chunks[-1][0].append(token)
            chunks[-1][1].append(weight)
    return chunks


def _encode_chunks(tokenizer, text_encoder, chunks, hidden_index: int | None, final_norm: bool, device):
    """Encode each chunk to (1, 77, dim) with weights applied; returns (embeds list, pooled of chunk 0)."""
    import torch

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    outputs, pooled = [], None
    for ids, weights in chunks:
        padding = CHUNK - len(ids)
        token_ids = torch.tensor([[bos, *ids, eos, *([pad] * padding)]], device=device)
        token_weights = torch.tensor([1.0, *weights, 1.0, *([1.0] * padding)], device=device)
        result = text_encoder(token_ids, output_hidden_states=hidden_index is not None)
        if hidden_index is None:
            hidden = result[0]
        else:
            hidden = result.hidden_states[hidden_index]
            if final_norm:
                # transformers 5 flattened CLIPTextModel (no .text_model); 4.x nests it.
                model = getattr(text_encoder, "text_model", text_encoder)
                hidden = model.final_layer_norm(hidden)
        if pooled is None and hasattr(result, "text_embeds"):
            pooled = result.text_embeds
        if not torch.all(token_weights == 1.0):
            original_mean = hidden.mean()
            hidden = hidden * token_weights.to(hidden.dtype)[None, :, None]
            hidden = hidden * (original_mean / hidden.mean())
        outputs.append(hidden)
    return outputs, pooled


def _pad_to(chunks: list, count: int, empty) -> list:
    return chunks + [empty] * (count - len(chunks))


def encode(pipeline: Any, texts: list[str], clip_skip: int = 1) -> list[Conditioning]:
    """Encode several prompt texts so that all have the same number of chunks.

    Equal lengths let the negative prompt and every prompt-editing stage be swapped or
    concatenated freely.
    """
    import torch

    device = pipeline._execution_device if hasattr(pipeline, "_execution_device") else pipeline.device
    sdxl = getattr(pipeline, "text_encoder_2", None) is not None
    _check_clip_skip(pipeline, clip_skip, sdxl)
    with torch.no_grad():
        if not sdxl:
            per_text = [_tokens_and_weights(pipeline.tokenizer, t) for t in texts]
            count = max(len(c) for c in per_text)
            hidden_index = None if clip_skip <= 1 else -clip_skip
            results = []
            for chunks in per_text:
                embeds, _ = _encode_chunks(pipeline.tokenizer, pipeline.text_encoder,
                                           _pad_to(chunks, count, ([], [])), hidden_index, True, device)
                results.append(Conditioning(torch.cat(embeds, dim=1)))
            return results
        encoders = [(pipeline.tokenizer, pipeline.text_encoder), (pipeline.tokenizer_2, pipeline.text_encoder_2)]
        per_text = [[_tokens_and_weights(tok, t) for tok, _ in encoders] for t in texts]
        count = max(len(c) for pair in per_text for c in pair)
        results = []
        for pair in per_text:
            parts, pooled = [], None
            for (tokenizer, encoder), chunks in zip(encoders, pair, strict=True):
                embeds, pooled_here = _encode_chunks(tokenizer, encoder, _pad_to(chunks, count, ([], [])),
                                                     -(clip_skip + 1), False, device)
                parts.append(torch.cat(embeds, dim=1))
                pooled = pooled_here
            results.append(Conditioning(torch.cat(parts, dim=-1), pooled))
        return results


def _check_clip_skip(pipeline: Any, clip_skip: int, sdxl: bool) -> None:
    """``clip_skip`` must name a layer the text encoder(s) have (known only once they are loaded)."""
    from ctrlgen.core.errors import JobError

    encoders = [pipeline.text_encoder] + ([pipeline.text_encoder_2] if sdxl else [])
    layers = min(int(getattr(e.config, "num_hidden_layers", 0) or 0) for e in encoders)
    deepest = layers if sdxl else layers + 1  # SDXL starts from the penultimate layer
    if layers and clip_skip > deepest:
        raise JobError(f"job.clip_skip={clip_skip} goes deeper than this checkpoint's text encoder, which has "
                       f"{layers} layers; use a clip_skip of at most {deepest}")


def zeros_like(conditioning: Conditioning) -> Conditioning:
    import torch

    pooled = None if conditioning.pooled is None else torch.zeros_like(conditioning.pooled)
    return Conditioning(torch.zeros_like(conditioning.embeds), pooled)


@dataclass
class PromptPlan:
    """Everything the pipeline call needs for one job's prompts, per step."""

    stages: list[tuple[int, Conditioning]]  # (last step, positive conditioning)
    negative: Conditioning
    batch_size: int

    def call_kwargs(self, stage: int = 0) -> dict[str, Any]:
        positive = self.stages[stage][1]
        kwargs = {
            "prompt_embeds": positive.embeds.repeat(self.batch_size, 1, 1),
            "negative_prompt_embeds": self.negative.embeds.repeat(self.batch_size, 1, 1),
        }
        if positive.pooled is not None:
            kwargs["pooled_prompt_embeds"] = positive.pooled.repeat(self.batch_size, 1)
            kwargs["negative_pooled_prompt_embeds"] = self.negative.pooled.repeat(self.batch_size, 1)
        return kwargs

    def stage_for_step(self, step: int) -> int:
        """Index of the stage that applies at ``step`` (1-based)."""
        for index, (last, _) in enumerate(self.stages):
            if step <= last:
                return index
        return len(self.stages) - 1


def plan_prompts(pipeline: Any, prompt: str, negative_prompt: str, steps: int, batch_size: int = 1,
                 clip_skip: int = 1) -> PromptPlan:
    """Encode the prompt's editing stages and the negative prompt with equal chunk counts."""
    schedule = prompt_schedule(prompt, steps)
    texts = [text for _, text in schedule] + [negative_prompt]
    encoded = encode(pipeline, texts, clip_skip=clip_skip)
    negative = encoded[-1]
    force_zeros = getattr(getattr(pipeline, "config", None), "force_zeros_for_empty_prompt", False)
    if negative_prompt == "" and force_zeros and negative.pooled is not None:
        negative = zeros_like(negative)
    stages = [(last, cond) for (last, _), cond in zip(schedule, encoded[:-1], strict=True)]
    return PromptPlan(stages, negative, batch_size)
