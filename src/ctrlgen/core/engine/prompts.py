"""AUTOMATIC1111 prompt syntax: attention weights, BREAK, prompt editing and alternation.

Two stages, as in A1111:

1. **Scheduling** — :func:`prompt_schedule` resolves prompt editing and alternation per
   step: ``[from:to:when]`` (``from`` until step ``when``, then ``to``), ``[to:when]``
   (added at ``when``), ``[from::when]`` (removed at ``when``), ``[a|b]`` (alternates every
   step). ``when`` < 1 is a fraction of the steps, otherwise a step number. The result is
   ``[(last_step, text), ...]`` with consecutive equal prompts merged.
2. **Attention** — :func:`parse_attention` turns one scheduled text into ``(text, weight)``
   pieces: ``(x)`` ×1.1, ``[x]`` ÷1.1, ``(x:1.3)`` sets 1.3, nesting multiplies, ``\\(``
   escapes, an unclosed bracket applies to the rest of the prompt, and ``BREAK`` (upper
   case, as a word) starts a new 75-token chunk (returned as ``("BREAK", -1.0)``).
   NovelAI's braces, as A1111 users write them: ``{x}`` ×1.05 per brace (``\\{`` escapes).

Before both, :func:`split_and` splits a prompt at A1111's ``AND`` (composable diffusion): each
sub-prompt, with its optional trailing ``:weight``, is conditioned on its own and the noise
predictions are combined in the guidance (:mod:`ctrlgen.core.engine.composition`).

The parser is hand-written: no maintained library implements both stages with A1111's
semantics (compel has its own syntax). Property tests check it never fails on any input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EMPHASIS = 1.1
BRACE_EMPHASIS = 1.05  # NovelAI's {x}
BREAK_MARK = ("BREAK", -1.0)

# -- stage 1: scheduling -----------------------------------------------------------------


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Scheduled:
    before: tuple
    after: tuple
    when: float


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple, ...]


_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*$")


def _split_top(text: str, separator: str) -> list[str]:
    """Split ``text`` on ``separator`` outside brackets and escapes."""
    parts, depth, current, index = [], 0, [], 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char in "([":
            depth += 1
        elif char in ")]" and depth > 0:
            depth -= 1
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def _matching_bracket(text: str, start: int) -> int:
    """Index of the ``]`` closing the ``[`` at ``start`` (-1 if unclosed)."""
    depth, index = 0, start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth == 0:
                return index if char == "]" else -1
        index += 1
    return -1


def _parse_schedule(text: str) -> tuple:
    nodes: list = []
    plain: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            plain.append(text[index : index + 2])
            index += 2
            continue
        if char == "[":
            end = _matching_bracket(text, index)
            node = _bracket_node(text[index + 1 : end]) if end > 0 else None
            if node is not None:
                if plain:
                    nodes.append(_Text("".join(plain)))
                    plain = []
                nodes.append(node)
                index = end + 1
                continue
        plain.append(char)
        index += 1
    if plain:
        nodes.append(_Text("".join(plain)))
    return tuple(nodes)


def _bracket_node(inner: str):
    options = _split_top(inner, "|")
    if len(options) > 1:
        return _Alternate(tuple(_parse_schedule(option) for option in options))
    parts = _split_top(inner, ":")
    if len(parts) in (2, 3) and _NUMBER.match(parts[-1]):
        when = float(parts[-1])
        if len(parts) == 2:
            return _Scheduled((), _parse_schedule(parts[0]), when)
        return _Scheduled(_parse_schedule(parts[0]), _parse_schedule(parts[1]), when)
    return None  # an attention bracket like [x] or [x:y]: left for stage 2


def _render(nodes: tuple, step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Scheduled):
            boundary = node.when * steps if node.when < 1 else node.when
            out.append(_render(node.before if step <= boundary else node.after, step, steps))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """``[(last_step, text), ...]``: which prompt text applies up to which step (1-based)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    nodes = _parse_schedule(prompt)
    schedule: list[tuple[int, str]] = []
    for step in range(1, steps + 1):
        text = _render(nodes, step, steps)
        if schedule and schedule[-1][1] == text:
            schedule[-1] = (step, text)
        else:
            schedule.append((step, text))
    return schedule


# -- stage 2: attention --------------------------------------------------------------------

_TOKEN = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\\\{|\\\}|\\\\|\\|\(|\[|\{|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|\}"
    r"|[^\\()\[\]{}:]+|:"
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """``(text, weight)`` pieces of one (scheduled) prompt; ``BREAK`` gives ``("BREAK", -1.0)``."""
    result: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []
    brace_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for piece in result[start:]:
            piece[1] *= factor

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            result.append([token[1], 1.0])
        elif token == "\\":
            result.append(["\\", 1.0])
        elif token == "(":
            round_open.append(len(result))
        elif token == "[":
            square_open.append(len(result))
        elif token == "{":
            brace_open.append(len(result))
        elif token == "}" and brace_open:
            multiply(brace_open.pop(), BRACE_EMPHASIS)
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), EMPHASIS)
        elif token == "]" and square_open:
            multiply(square_open.pop(), 1 / EMPHASIS)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index > 0:
                    result.append(list(BREAK_MARK))
                if part:
                    result.append([part, 1.0])
    for start in round_open:
        multiply(start, EMPHASIS)
    for start in square_open:
        multiply(start, 1 / EMPHASIS)
    for start in brace_open:
        multiply(start, BRACE_EMPHASIS)
    if not result:
        return [("", 1.0)]
    merged: list[list] = [result[0]]
    for piece in result[1:]:
        if piece[1] == merged[-1][1] and piece[1] != -1.0 and merged[-1][1] != -1.0:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(text_, float(weight_)) for text_, weight_ in merged]


# -- composable diffusion: AND ----------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([+-]?(?:\d+\.?\d*|\.\d+)))?\s*$", re.S)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """A1111's composable diffusion: ``[(text, weight), ...]``, one per sub-prompt.

    Sub-prompts are separated by ``AND`` (upper case, as a word, anywhere: A1111 splits before
    it parses brackets); a trailing ``:number`` is the sub-prompt's weight (default 1), as in
    ``a castle AND a dragon :0.8``. A prompt without ``AND`` is one part. Trailing spaces are
    dropped from each text (they do not change its tokens)."""
    parts = []
    for part in _AND.split(prompt):
        match = _PART_WEIGHT.match(part)
        text, weight = (match.group(1), match.group(2)) if match else (part, None)
        parts.append((text, 1.0 if weight is None else float(weight)))
    return parts
