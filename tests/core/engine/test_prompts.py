"""A1111 prompt syntax: examples with known answers, and properties over any input."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrlgen.core.engine.prompts import parse_attention, prompt_schedule

W = 1.1


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("(cat)", [("cat", W)]),
        ("((cat))", [("cat", W * W)]),
        ("[cat]", [("cat", 1 / W)]),
        ("(cat:1.3)", [("cat", 1.3)]),
        ("(a (cat:1.5))", [("a ", W), ("cat", W * 1.5)]),
        ("(cat:0.5) and dog", [("cat", 0.5), (" and dog", 1.0)]),
        (r"\(cat\) \[x\] a\\b", [(r"(cat) [x] a\b", 1.0)]),
        ("(unclosed cat", [("unclosed cat", W)]),
        ("[unclosed", [("unclosed", 1 / W)]),
        ("stray ) and ]", [("stray ) and ]", 1.0)]),
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("aBREAK b", [("aBREAK b", 1.0)]),
        ("(red:1.2) BREAK (blue)", [("red", 1.2), ("BREAK", -1.0), ("blue", W)]),
        ("time: 12:30", [("time: 12:30", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_attention_examples(prompt, expected):
    result = parse_attention(prompt)
    assert [t for t, _ in result] == [t for t, _ in expected]
    assert [w for _, w in result] == pytest.approx([w for _, w in expected])


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("a cat", 10, [(10, "a cat")]),
        ("[dog:cat:0.5] sitting", 10, [(5, "dog sitting"), (10, "cat sitting")]),
        ("[dog:cat:3] sitting", 10, [(3, "dog sitting"), (10, "cat sitting")]),
        ("a [hat:4]", 10, [(4, "a "), (10, "a hat")]),
        ("a [hat::0.8]", 10, [(8, "a hat"), (10, "a ")]),
        ("[cat|dog] run", 4, [(1, "cat run"), (2, "dog run"), (3, "cat run"), (4, "dog run")]),
        ("[a:[b:c:0.8]:0.4]", 10, [(4, "a"), (8, "b"), (10, "c")]),
        ("(a [b:c:0.5]:1.2)", 4, [(2, "(a b:1.2)"), (4, "(a c:1.2)")]),
        ("[x] and [y:z]", 6, [(6, "[x] and [y:z]")]),  # attention brackets, not editing
        (r"\[a:b:0.5\]", 6, [(6, r"\[a:b:0.5\]")]),
        ("[a:b:20]", 10, [(10, "a")]),
    ],
)
def test_schedule_examples(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_schedule_needs_steps():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        prompt_schedule("a", 0)


ANY_TEXT = st.text(alphabet=st.sampled_from(list("ab c()[]:|\\.019BREAK")), max_size=40)
PLAIN = st.text(alphabet=st.characters(blacklist_characters="()[]{}:\\|", blacklist_categories=("Cs",)),
                min_size=1, max_size=30).filter(lambda s: "BREAK" not in s)


@given(ANY_TEXT)
@settings(max_examples=400)
def test_attention_never_fails_and_weights_are_positive(prompt):
    for text, weight in parse_attention(prompt):
        assert weight > 0 or (text, weight) == ("BREAK", -1.0)


def test_a_weight_that_is_not_a_number_is_text():
    # "(a:.)" once reached float(".") and ended a job as an internal error.
    assert parse_attention("(a:.)") == [("a:.", 1.1)]
    assert parse_attention("(a:1.5)") == [("a", 1.5)]


@given(PLAIN)
def test_plain_text_is_one_piece_of_weight_one(text):
    assert parse_attention(text) == [(text, 1.0)]


@given(st.text(max_size=30).filter(lambda s: "BREAK" not in s))
def test_escaping_round_trips(text):
    escaped = re.sub(r"([\\()\[\]{}])", r"\\\1", text)
    assert "".join(t for t, _ in parse_attention(escaped)) == text
    assert all(w == 1.0 for _, w in parse_attention(escaped))


@given(st.integers(min_value=0, max_value=6), PLAIN)
def test_nesting_multiplies(depth, word):
    ((text, weight),) = parse_attention("(" * depth + word + ")" * depth)
    assert text == word and weight == pytest.approx(W**depth)


@given(ANY_TEXT, st.integers(min_value=1, max_value=30))
@settings(max_examples=300)
def test_schedule_is_well_formed(prompt, steps):
    schedule = prompt_schedule(prompt, steps)
    ends = [end for end, _ in schedule]
    assert ends == sorted(set(ends)) and ends[-1] == steps
    assert all(a != b for (_, a), (_, b) in zip(schedule, schedule[1:], strict=False))


@given(PLAIN, PLAIN, st.integers(min_value=2, max_value=40), st.data())
def test_editing_switches_at_the_given_step(before, after, steps, data):
    when = data.draw(st.integers(min_value=1, max_value=steps - 1))
    schedule = prompt_schedule(f"[{before}:{after}:{when}]", steps)
    if before == after:
        assert schedule == [(steps, before)]
    else:
        assert schedule == [(when, before), (steps, after)]
