"""Cutting replies into Discord messages (adapters/discord_text.py): examples, and properties
checked on generated prose and code with hypothesis."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcore.adapters.discord_text import (
    LIMIT,
    close_code_block,
    split_message,
    split_once,
)

FENCE = "```"


def squashed(text: str) -> str:
    """The text without fences, language tags or whitespace: what a split must keep."""
    return re.sub(r"```(?:py|rust|c\+\+)?|\s", "", text)


def test_text_that_fits_is_one_message_and_blank_text_none() -> None:
    assert split_message("hello\n\nworld") == ["hello\n\nworld"]
    assert split_message("x" * LIMIT) == ["x" * LIMIT]
    assert split_message(" \n\t ") == []
    assert split_once("short") == ("short", "")


def test_a_code_block_cut_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"let x{i} = {i};" for i in range(400))
    text = f"Some Rust:\n```rust\n{code}\n```\nThat was it."
    parts = split_message(text)
    assert len(parts) >= 3 and all(len(part) <= LIMIT for part in parts)
    assert parts[0].startswith("Some Rust:\n```rust\nlet x0") and parts[0].endswith("\n```")
    assert all(part.startswith("```rust\nlet x") for part in parts[1:])
    assert parts[-1].endswith("\n```\nThat was it.")
    lines = [line for part in parts for line in part.splitlines() if line.startswith("let ")]
    assert lines == code.splitlines()  # no code line was cut


def test_prose_is_cut_at_a_line_end_or_else_at_a_space() -> None:
    paragraph = " ".join(["word"] * 300)  # 1,499 characters, no line break
    parts = split_message(f"{paragraph}\n{paragraph}")
    assert parts == [paragraph, paragraph]
    long_line = " ".join(["word"] * 1000)
    parts = split_message(long_line)
    assert all(part.startswith("word") and part.endswith("word") for part in parts)
    assert " ".join(parts) == long_line


def test_a_line_longer_than_a_message_is_cut_where_it_must_be() -> None:
    parts = split_message("```\n" + "y" * 5000 + "\n```")
    assert all(len(part) <= LIMIT and part.count(FENCE) == 2 for part in parts)
    assert "".join(p.removeprefix("```\n").removesuffix("\n```") for p in parts) == "y" * 5000


def test_a_cut_never_goes_through_a_fence() -> None:
    text = "z" * (LIMIT - 5) + "```py\nprint()\n```"
    parts = split_message(text)
    assert parts[0] == "z" * (LIMIT - 5) and parts[1] == "```py\nprint()\n```"


def test_close_code_block() -> None:
    assert close_code_block("```py\nx = 1") == "```py\nx = 1\n```"
    assert close_code_block("```py\nx = 1\n") == "```py\nx = 1\n```"
    assert close_code_block("```py\nx\n```\ndone") == "```py\nx\n```\ndone"


def test_a_limit_too_small_for_fences_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 100"):
        split_once("x" * 200, limit=50)


# -- properties --------------------------------------------------------------------------------

WORD = st.text(alphabet="abcdefgh", min_size=1, max_size=12)
PROSE_LINE = st.lists(WORD, min_size=0, max_size=30).map(" ".join)
PROSE = st.lists(PROSE_LINE, min_size=1, max_size=12).map("\n".join)
CODE_LINE = st.text(alphabet="xyz0123 =();", min_size=0, max_size=45).map(lambda s: "#" + s)
CODE = st.tuples(
    st.sampled_from(["", "py", "rust", "c++"]), st.lists(CODE_LINE, min_size=1, max_size=60)
).map(lambda t: f"{FENCE}{t[0]}\n" + "\n".join(t[1]) + f"\n{FENCE}")
DOCUMENT = st.lists(st.one_of(PROSE, CODE), min_size=1, max_size=8).map("\n".join)


def _code_lines(parts: list[str]) -> list[str]:
    """The lines inside code blocks, fence lines left out."""
    found, inside = [], False
    for part in parts:
        for line in part.split("\n"):
            if line.startswith(FENCE):
                inside = not inside
            elif inside:
                found.append(line)
    return found


@settings(max_examples=300, deadline=None)
@given(DOCUMENT, st.integers(min_value=100, max_value=400))
def test_split_properties(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    # Every part fits, says something, and leaves no code block open.
    assert all(len(part) <= limit and part.strip() for part in parts)
    assert all(part.count(FENCE) % 2 == 0 for part in parts)
    # Nothing is lost or repeated but whitespace at the cuts and the fences added around them.
    assert squashed("".join(parts)) == squashed(text)
    # Code lines (all shorter than any message here) are never cut: each part's code lines are
    # the original code lines, in order.
    assert _code_lines(parts) == [line for line in text.split("\n") if line.startswith("#")]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(max_size=1500), st.text(alphabet="`ab py\n", max_size=1500)),
    st.integers(min_value=100, max_value=300),
)
def test_any_text_is_cut_into_parts_that_fit(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    assert all(len(part) <= limit and part.strip() for part in parts)
    assert all(part.count(FENCE) % 2 == 0 for part in parts[:-1])
    if "`" not in text:  # no fences added: the parts are the text, less whitespace at the cuts
        assert re.sub(r"\s", "", "".join(parts)) == re.sub(r"\s", "", text)


def test_no_cut_leaves_an_empty_code_block() -> None:
    text = "intro\n```\n" + "y" * 3000
    parts = split_message(text)
    assert parts[0] == "intro"
    assert all(not part.rstrip().endswith("```python\n```") for part in parts)
    long_code = "x" * 1990 + "\n```python\n" + "print(1)\n" * 300 + "```"
    for part in split_message(long_code):
        assert "```python\n```" not in part
        assert len(part) <= 2000
