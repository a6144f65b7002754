"""Prompt composition: A1111's ``AND`` (composable diffusion) and regional prompts, in the guidance.

The words used here:

- a **group** is the root prompt (``job.prompt`` / ``job.negative_prompt``, seen by the whole
  canvas) or one region (its own prompt and negative prompt, seen only under its mask: the
  ``region`` adapter masks the UNet's cross-attention, :mod:`ctrlgen.adapters.regions`);
- a **part** is one ``AND`` sub-prompt of a group's prompt with its weight
  (:func:`~ctrlgen.core.engine.prompts.split_and`);
- a **pass** is one conditioned UNet evaluation. Pass *j* shows every group's *j*-th part (a
  group with fewer parts shows its last).

The noise prediction is ``eps = eps_u + cfg · Σ_j W_j ⊙ (eps_j − eps_u)`` with
``W_j(x) = Σ_g share_g(x) · w_gj`` (``w_gj`` is group *g*'s *j*-th part's weight, 0 when it has
fewer parts). A region's share is its feathered mask, scaled down where regions overlap so that
the shares sum to at most 1; the root's share is what is left. Without regions the root's share
is 1 everywhere and this is A1111's composable diffusion exactly. The negative prompts are not
split (A1111 reads ``AND`` there as text too).

The pipeline keeps running its own loop with one positive conditioning (pass 1's). When more
than one pass is needed, or a weight is not 1, a hook on the UNet widens each call's batch to
the unconditional block plus one block per pass, and folds the result back into the "positive"
prediction ``eps_u + Σ_j W_j ⊙ (eps_j − eps_u)``; the pipeline's own CFG line then gives the sum
above. Hooks and callbacks are removed on exit.

**The token layout** the regions adapter's attention masks read: a regional conditioning is
one block per group along the sequence, the root first and then the regions in order, each
block the same number of 77-token chunks (``encode`` pads every text to the same count).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctrlgen.core.engine.conditioning import Conditioning, PromptPlan, encode, plan_prompts, zeros_like
from ctrlgen.core.engine.prompts import prompt_schedule, split_and


@dataclass
class PromptRegion:
    """One region as the prompt planner sees it: its texts and its share of the canvas
    (float32 H×W in [0, 1] at the generation size, feathered). The regions adapter puts these
    on ``GenerationContext.regions``."""

    prompt: str
    negative_prompt: str
    mask: np.ndarray = field(repr=False)


@dataclass
class ComposedPlan(PromptPlan):
    """A :class:`PromptPlan` whose ``stages`` hold pass 1 (what the pipeline carries), plus the
    other passes per stage and the weight maps ``W_j`` that fold them together."""

    passes: list[list[Conditioning]] = field(default_factory=list)  # per stage: passes 2..J
    weights: Any = None  # torch (J, 1, H, W) or (J, 1, 1, 1); None: no folding needed
    groups: int = 1

    @property
    def pass_count(self) -> int:
        return 1 + (len(self.passes[0]) if self.passes else 0)


def composed(prompt: str, regions: list[PromptRegion] | tuple = ()) -> bool:
    """Whether ``prompt`` (with ``regions``) needs composition; a plain prompt keeps the plain path."""
    parts = split_and(prompt)
    return bool(regions) or len(parts) > 1 or parts[0][1] != 1.0


def shares(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Each group's share of every pixel: the root's first, then each region's (they sum to 1)."""
    if not masks:
        return []
    total = np.sum(masks, axis=0)
    scale = np.maximum(total, 1.0)
    regional = [(mask / scale).astype(np.float32) for mask in masks]
    root = np.clip(1.0 - np.sum(regional, axis=0), 0.0, 1.0).astype(np.float32)
    return [root, *regional]


def _text_at(schedule: list[tuple[int, str]], step: int) -> str:
    for last, text in schedule:
        if step <= last:
            return text
    return schedule[-1][1]


def plan(pipeline: Any, prompt: str, negative_prompt: str, steps: int, batch_size: int = 1, clip_skip: int = 1,
         regions: list[PromptRegion] | tuple = ()) -> PromptPlan:
    """The job's prompt plan: :func:`~ctrlgen.core.engine.conditioning.plan_prompts` for a plain
    prompt, else a :class:`ComposedPlan` (``AND`` parts, part weights, regions)."""
    if not composed(prompt, regions):
        return plan_prompts(pipeline, prompt, negative_prompt, steps, batch_size, clip_skip)
    import torch

    # 1. Each group's parts and negative; each part's prompt-editing schedule.
    groups = [(split_and(prompt), negative_prompt)] + [(split_and(r.prompt), r.negative_prompt) for r in regions]
    count = max(len(parts) for parts, _ in groups)
    schedules = [[prompt_schedule(text, steps) for text, _ in parts] for parts, _ in groups]

    # 2. The stages: consecutive steps where every pass shows the same texts.
    def texts(step: int) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(_text_at(group[min(j, len(group) - 1)], step) for group in schedules)
                     for j in range(count))

    stages: list[tuple[int, tuple]] = []
    for step in range(1, steps + 1):
        current = texts(step)
        if stages and stages[-1][1] == current:
            stages[-1] = (step, current)
        else:
            stages.append((step, current))

    # 3. Encode every distinct text once, all to the same number of chunks.
    negatives = [negative for _, negative in groups]
    unique = sorted({text for _, passes in stages for texts_ in passes for text in texts_} | set(negatives))
    encoded = dict(zip(unique, encode(pipeline, unique, clip_skip=clip_skip), strict=True))
    force_zeros = getattr(getattr(pipeline, "config", None), "force_zeros_for_empty_prompt", False)

    def negative_of(text: str) -> Conditioning:
        cond = encoded[text]
        return zeros_like(cond) if text == "" and force_zeros and cond.pooled is not None else cond

    def joined(conds: list[Conditioning]) -> Conditioning:  # root block first (its pooled), then the regions
        return Conditioning(torch.cat([c.embeds for c in conds], dim=1), conds[0].pooled)

    negative = joined([negative_of(text) for text in negatives])
    per_stage = [[joined([encoded[text] for text in pass_texts]) for pass_texts in passes] for _, passes in stages]

    # 4. The weight maps W_j (None when pass 1 alone, at weight 1, is the whole sum).
    part_weights = [[weight for _, weight in parts] + [0.0] * (count - len(parts)) for parts, _ in groups]
    weights = None
    if count > 1 or any(w[0] != 1.0 for w in part_weights):
        if regions:
            group_shares = shares([r.mask for r in regions])
            maps = [sum(share * part_weights[g][j] for g, share in enumerate(group_shares)) for j in range(count)]
            weights = torch.from_numpy(np.stack(maps).astype(np.float32))[:, None]
        else:
            weights = torch.tensor(part_weights[0], dtype=torch.float32).view(count, 1, 1, 1)
    return ComposedPlan([(last, passes[0]) for (last, _), passes in zip(stages, per_stage, strict=True)],
                        negative, batch_size, passes=[passes[1:] for passes in per_stage], weights=weights,
                        groups=len(groups))


@contextlib.contextmanager
def guided(context: Any, prompt_plan: PromptPlan):
    """Fold a :class:`ComposedPlan`'s passes into the pipeline's guidance for the job (hooks on
    the UNet and a step callback on ``context``; all removed on exit). Nothing for other plans."""
    if not isinstance(prompt_plan, ComposedPlan) or prompt_plan.weights is None:
        yield
        return
    unet = context.pipeline.unet
    folding = _Folding(prompt_plan, type(unet).forward)
    context.step_callbacks.append(folding.on_step_end)
    # Prepended: the widened batch is what other adapters' UNet hooks (reference-only) see.
    handles = [unet.register_forward_pre_hook(folding.before, with_kwargs=True, prepend=True),
               unet.register_forward_hook(folding.after, with_kwargs=True, prepend=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        context.step_callbacks.remove(folding.on_step_end)


class _Folding:
    """The UNet hooks of :func:`guided`: widen the batch to every pass, fold the passes back."""

    def __init__(self, prompt_plan: ComposedPlan, forward: Any) -> None:
        self.plan = prompt_plan
        self.signature = inspect.signature(forward)
        self.stage = 0
        self.depth = 0  # nested UNet calls (another adapter's inside ours) pass through
        self.widened: bool | None = None  # None: this call was not widened; else whether CFG was on
        self._weights: dict[tuple, Any] = {}

    def on_step_end(self, pipe, step, timestep, tensors):
        self.stage = self.plan.stage_for_step(step + 2)  # as the engine's own stage switch
        self.depth = 0
        return None

    def _widen(self, value: Any, n: int, guided: bool, count: int) -> Any:
        """A batch-``n`` tensor (recursively in lists, tuples, dicts) as the widened batch: the
        unconditional block, then the conditional block once per pass."""
        import torch

        if isinstance(value, torch.Tensor):
            if value.ndim == 0 or value.shape[0] != n:
                return value
            batch = self.plan.batch_size
            return torch.cat([value[:batch]] + [value[batch:]] * count) if guided else torch.cat([value] * (count + 1))
        if isinstance(value, (list, tuple)):
            return type(value)(self._widen(v, n, guided, count) for v in value)
        if isinstance(value, dict):
            return {k: self._widen(v, n, guided, count) for k, v in value.items()}
        return value

    def before(self, module, args, kwargs):
        import torch

        self.depth += 1
        if self.depth > 1:
            return None
        self.widened = None
        call = self.signature.bind(module, *args, **kwargs).arguments
        call.pop("self", None)
        call.update(call.pop("kwargs", {}) or {})
        sample, states = call["sample"], call["encoder_hidden_states"]
        n, batch, count = sample.shape[0], self.plan.batch_size, self.plan.pass_count
        if n not in (batch, 2 * batch) or isinstance(states, tuple):
            return None
        guided = n == 2 * batch
        extra = self.plan.passes[min(self.stage, len(self.plan.passes) - 1)]
        negative = self.plan.negative
        uncond = states[:batch] if guided else negative.embeds.to(states).repeat(batch, 1, 1)
        first = states[batch:] if guided else states
        widened = {name: self._widen(value, n, guided, count) for name, value in call.items()
                   if name not in ("encoder_hidden_states", "added_cond_kwargs")}
        widened["encoder_hidden_states"] = torch.cat(
            [uncond, first] + [c.embeds.to(states).repeat(batch, 1, 1) for c in extra])
        added = call.get("added_cond_kwargs")
        if added:
            added = dict(added)
            pooled = added.pop("text_embeds", None)
            added = self._widen(added, n, guided, count)
            if pooled is not None:
                negative_pooled = pooled[:batch] if guided else negative.pooled.to(pooled).repeat(batch, 1)
                added["text_embeds"] = torch.cat([negative_pooled, pooled[batch:] if guided else pooled]
                                                 + [c.pooled.to(pooled).repeat(batch, 1) for c in extra])
            widened["added_cond_kwargs"] = added
        self.widened = guided
        return (), widened

    def _weights_at(self, height: int, width: int, like: Any) -> Any:
        import torch.nn.functional as F

        key = (height, width, like.dtype, like.device)
        if key not in self._weights:
            weights = self.plan.weights
            if weights.shape[-2:] != (1, 1):
                weights = F.interpolate(weights, size=(height, width), mode="area")
            self._weights[key] = weights.to(device=like.device, dtype=like.dtype)
        return self._weights[key]

    def after(self, module, args, kwargs, output):
        import torch

        self.depth -= 1
        if self.depth > 0 or self.widened is None:
            return None
        guided, self.widened = self.widened, None
        sample = output[0] if isinstance(output, tuple) else output.sample
        blocks = sample.chunk(self.plan.pass_count + 1)
        uncond = blocks[0]
        weights = self._weights_at(sample.shape[-2], sample.shape[-1], sample)
        folded = uncond + sum(weights[j] * (block - uncond) for j, block in enumerate(blocks[1:]))
        result = torch.cat([uncond, folded]) if guided else folded
        if isinstance(output, tuple):
            return (result, *output[1:])
        return type(output)(sample=result)
