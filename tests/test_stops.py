"""Stop strings on a stream: the same cut however the text is split into pieces."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from chatcore.generation.stops import StopStringFilter


def _run(pieces: list[str], stops: list[str]) -> str:
    stream = StopStringFilter(stops)
    return "".join(stream.feed(p) for p in pieces) + stream.flush()


def _expected(text: str, stops: list[str]) -> str:
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[: min(cuts)] if cuts else text


def test_cuts_before_the_stop_string() -> None:
    assert _run(["Hello", " wor", "ld\nUser:", " more"], ["\nUser:"]) == "Hello world"


def test_holds_back_only_what_could_start_a_stop() -> None:
    stream = StopStringFilter(["END"])
    assert stream.feed("abcE") == "abc"
    assert stream.feed("N") == ""
    assert stream.feed("x") == "ENx"
    assert stream.feed("yEND tail") == "y"
    assert stream.stopped
    assert stream.feed("more") == ""
    assert stream.flush() == ""


def test_no_stops_passes_everything() -> None:
    assert _run(["a", "b"], []) == "ab"


@given(
    text=st.text(alphabet="abcXY\n", max_size=60),
    stops=st.lists(st.text(alphabet="abcXY\n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=10),
)
def test_any_split_gives_the_same_result(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert _run(pieces, stops) == _expected(text, stops)
