"""The repetition rewriter on the loops SmolLM2-135M falls into, on the repetition real text
has (lists, refrains, code, "very very"), and on any split of the stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcore.events import FinishReason
from chatcore.pipeline.repetition import RepetitionFilter
from chatcore.pipeline.rewrite import REWRITERS
from chatcore.pipeline.steps import RewriterSettings, StepContext
from tests.rewrite_helpers import Chain, Reports, run, split

DATA = Path(__file__).parent / "data" / "replies.jsonl"


def _clean(text: str) -> tuple[str, list[str]]:
    reports = Reports()
    return run(RepetitionFilter(reports), [text]), reports.categories


# -- loops ----------------------------------------------------------------------------------

SORRY = "I'm sorry, but I can't assist with that."


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (f"{SORRY} {SORRY} {SORRY} {SORRY}", SORRY),
        ("I am sorry. I am sorry. I am sorry.", "I am sorry."),
        ("The the the the the cat sat.", "The cat sat."),
        (
            "It is a network of networks of networks of networks of networks of networks.",
            "It is a network of networks.",
        ),
        (
            "The world of the world of the world of the world of the world of the",
            "The world of",
        ),
        (
            "Exercise is good for you. It keeps you fit. Exercise is good for you. "
            "It keeps you fit. Exercise is good for you. It keeps",
            "Exercise is good for you. It keeps you fit.",
        ),
        (
            "Tips:\n\n1. Eat a balanced diet.\n2. Get enough sleep.\n3. Stay hydrated.\n"
            "4. Eat a balanced diet.\n5. Get enough sleep.\n6. Stay hydrated.\n7. Eat a",
            "Tips:\n\n1. Eat a balanced diet.\n2. Get enough sleep.\n3. Stay hydrated.",
        ),
        (
            "The Eiffel Tower is a famous landmark in Paris, France. "
            "The Eiffel Tower is a famous landmark located in Paris, France. It is tall.",
            "The Eiffel Tower is a famous landmark in Paris, France. It is tall.",
        ),
        (
            "Paris is the capital of France. It is known for the Eiffel Tower. "
            "Paris is the capital of France. It has many museums.",
            "Paris is the capital of France. It is known for the Eiffel Tower. "
            "It has many museums.",
        ),
        ("Yes. Yes. Yes. Yes. Yes. Yes.", "Yes."),
        ("Hello!\n\nHello!\n\nHello!\n\nHello!\n\nHow are you?", "Hello!\n\nHow are you?"),
    ],
)
def test_loops_and_repeats_are_dropped(reply: str, expected: str) -> None:
    assert _clean(reply)[0] == expected


# -- repetition that is meant -------------------------------------------------------------

POEM = (
    "The sea is wide, the sea is deep,\n"
    "It sings the sailors off to sleep.\n"
    "Oh, the sea, the endless sea.\n"
    "\n"
    "The waves come in, the waves go out,\n"
    "They never stop, they never doubt.\n"
    "Oh, the sea, the endless sea.\n"
)


@pytest.mark.parametrize(
    "reply",
    [
        POEM,
        "It was very very cold. Ho ho ho, said Santa.",
        "Tips:\n- Drink water every day.\n- Drink tea every day.\n- Drink milk every day.",
        "1. Preheat the oven.\n2. Mix the flour.\n3. Mix the sugar.\n4. Bake for 20 minutes.",
        "Yes. Yes. Yes! I did it.",
        "Hello!\n\nHello!\n\nHello!\n\nHow are you?",
        "```python\n" + "print('hi')\n" * 4 + "```\nThat prints four times.",
        "```\nthe the the the the\n```\nThe code repeats a word.",
        "Matrix: 0 0 0 0 0 0.",
        "Add one cup of flour. Then add one cup of sugar. Then add one cup of milk.",
        "Then add one cup of white sugar. Stir well. Then add one cup of white flour.",
        "| a | b |\n|---|---|\n| 1 | 2 |\n| 1 | 2 |",
        "Go left. Go right. Go left. Go up.",
    ],
)
def test_meant_repetition_stays(reply: str) -> None:
    assert _clean(reply) == (reply, [])


def test_a_chorus_sung_twice_back_to_back_is_taken_for_a_loop() -> None:
    """A known limit: with nothing between them, two copies of a block look like a loop."""
    chorus = "Sing with me tonight,\nUnder the stars so bright.\n"
    assert _clean(chorus + chorus)[0] == chorus


# -- reports and the looping flag -----------------------------------------------------------


def test_reports_say_what_was_dropped() -> None:
    assert _clean(f"{SORRY} {SORRY} {SORRY}")[1] == ["loop"]
    assert _clean("the the the the end")[1] == ["loop"]
    repeated = "Paris is the capital of France. It is big. Paris is the capital of France. Hm."
    assert _clean(repeated)[1] == ["repeated_sentence"]


def test_looping_is_set_while_the_loop_lasts() -> None:
    f = RepetitionFilter(Reports())
    assert f.feed(f"{SORRY} ") == SORRY
    assert not f.looping
    assert f.feed(f"{SORRY} ") == ""
    assert f.looping
    assert f.feed(f"{SORRY} ") == ""
    assert f.looping
    assert f.feed("Is there anything else? ") == " Is there anything else?"
    assert not f.looping
    assert f.flush("stop") == " "


def test_a_word_loop_sets_looping_until_a_new_word() -> None:
    f = RepetitionFilter(Reports())
    f.feed("and the the the the ")
    assert f.looping
    f.feed("the the ")
    assert f.looping
    f.feed("end ")
    assert not f.looping


def test_looping_shows_while_a_real_reply_goes_round() -> None:
    """SmolLM2-135M's own essay (greedy, no repetition penalty) loops on a paragraph with
    small changes; ``looping`` shows before the token limit ends it."""
    sample = next(s for s in _samples() if s["name"] == "smollm2_internet_essay")
    f = RepetitionFilter(Reports())
    text = sample["reply"]
    seen = []
    for i in range(0, len(text), 4):
        f.feed(text[i : i + 4])
        seen.append(f.looping)
    assert any(seen)
    assert not seen[0]


def test_code_breaks_a_loop_and_is_never_touched() -> None:
    reply = f"{SORRY} {SORRY}\n```\n{SORRY} {SORRY}\n```\n{SORRY}"
    assert _clean(reply)[0] == f"{SORRY}\n```\n{SORRY} {SORRY}\n```\n{SORRY}"


def test_a_run_on_sentence_is_released_in_stretches() -> None:
    f = RepetitionFilter(Reports(), max_unit_chars=50)
    words = " ".join(f"word{i}" for i in range(40))
    out = f.feed(words)
    assert out and words.startswith(out)
    assert len(f.held) <= 50 + len("word39") + 1


# -- streaming ------------------------------------------------------------------------------

SENTENCES = [
    "The internet began as a research project.",
    "Bread needs flour, water and yeast!",
    "Why is the sky blue?",
    "I am sorry.",
    "Yes.",
    "Exercise keeps the heart strong and the mind clear.",
    "Exercise keeps the heart strong and the mind calm.",
    "1. Drink water.",
    "- Sleep well",
    "the the the",
]
SEPARATORS = [" ", "\n", "\n\n", "  "]

replies = st.lists(
    st.tuples(st.sampled_from(SENTENCES), st.sampled_from(SEPARATORS)), max_size=25
).map(lambda parts: "".join(s + sep for s, sep in parts))
cut_lists = st.lists(st.integers(min_value=0, max_value=1200), max_size=15)


@settings(max_examples=200, deadline=None)
@given(
    reply=replies,
    cuts=cut_lists,
    reason=st.sampled_from(["stop", "length"]),
    max_period=st.integers(1, 6),
)
def test_any_split_gives_the_same_result(
    reply: str, cuts: list[int], reason: FinishReason, max_period: int
) -> None:
    whole_reports, reports = Reports(), Reports()
    whole = run(RepetitionFilter(whole_reports, max_period=max_period), [reply], reason)
    pieces = split(reply, cuts)
    assert run(RepetitionFilter(reports, max_period=max_period), pieces, reason) == whole
    assert reports.calls == whole_reports.calls


DISTINCT = [
    "The internet began as a research project.",
    "Bread needs flour, water and yeast!",
    "Why is the sky blue?",
    "Dragons guard their gold in deep caves.",
    "Sleep helps the body repair itself.",
    "Python sorts lists with the sorted function.",
]


@settings(max_examples=100, deadline=None)
@given(
    order=st.permutations(DISTINCT),
    seps=st.lists(st.sampled_from(SEPARATORS), min_size=6, max_size=6),
    cuts=cut_lists,
)
def test_text_without_repeats_is_released_word_by_word(
    order: list[str], seps: list[str], cuts: list[int]
) -> None:
    reply = "".join(s + sep for s, sep in zip(order, seps, strict=True))
    f = RepetitionFilter(Reports())
    fed = out = ""
    for piece in split(reply, cuts):
        fed += piece
        out += f.feed(piece)
        assert fed.startswith(out)
        # No sentence starts like another: only a partial word and whitespace are held.
        assert len(fed[len(out) :].split()) <= 1
    assert out + f.flush("stop") == reply


@settings(max_examples=150, deadline=None)
@given(reply=replies, cuts=cut_lists)
def test_held_back_text_is_bounded(reply: str, cuts: list[int]) -> None:
    f = RepetitionFilter(Reports(), max_period=6)
    for piece in split(reply, cuts):
        f.feed(piece)
        # A possible repeat holds at most five whole units (sentences or lines), plus the one
        # being read and the spaces around them.
        assert len(f.held) <= 6 * max(len(s) + len(sep) for s in SENTENCES for sep in SEPARATORS)


NEW_SENTENCES = [
    "Bread needs flour, water and yeast!",
    "Dragons guard their gold in deep caves.",
    "Why is the sky blue?",
]


@pytest.mark.parametrize("sentence", NEW_SENTENCES)
def test_a_new_sentence_comes_out_word_by_word(sentence: str) -> None:
    f = RepetitionFilter(Reports())
    fed = "The internet began as a research project. Sleep helps the body. "
    out = f.feed(fed)
    for word in sentence.split():
        for piece in (word[:2], word[2:], " "):
            fed += piece
            out += f.feed(piece)
            # All but the word being read (and the space after the last word).
            complete = fed if piece == " " else fed[: fed.rstrip().rfind(" ")]
            assert out == complete.rstrip()
    assert out + f.flush("stop") == fed


def test_a_long_reply_without_a_full_stop_streams() -> None:
    """200 words and no full stop (a model that never ends its sentence) come out as they are
    fed, so the user sees them and can stop them. Held: the word being read, an ``and`` that
    could begin ``and and and and``, and where a 400-character stretch starts with the same
    word as an earlier one, a few words until it differs."""
    reply = "So " + " ".join(f"thing{i} and" if i % 3 else f"item{i}" for i in range(199))
    f = RepetitionFilter(Reports())
    out = ""
    for i in range(0, len(reply), 4):
        out += f.feed(reply[i : i + 4])
        assert reply.startswith(out)
        assert len(reply[len(out) : i + 4].split()) <= 5
    assert out + f.flush("length") == reply


def test_only_words_that_could_go_on_with_a_word_loop_are_held() -> None:
    f = RepetitionFilter(Reports())
    assert f.feed("It was very very ") == "It was very"
    assert f.feed("cold, of the sea of the ") == " very cold, of the sea"
    assert f.feed("land. ") == " of the land."


def test_a_possible_repeat_is_held_until_it_is_decided() -> None:
    f = RepetitionFilter(Reports())
    first = "Paris is the capital of France."
    assert f.feed(f"{first} It is big. ") == f"{first} It is big."
    # Starts like the first sentence: held.
    assert f.feed("Paris is the capital of ") == ""
    assert f.held == " Paris is the capital of "
    # Still close enough to be a near repeat.
    assert f.feed("Spain and ") == ""
    # Too far from it now: released, and from here on word by word.
    assert f.feed("a port ") == " Paris is the capital of Spain and a port"
    assert f.feed("city") == ""
    assert f.flush("stop") == " city"


def test_a_held_repeat_is_bounded_by_the_units_of_a_loop() -> None:
    """While a loop may be starting, its units are held: at most ``max_period - 1`` whole
    units besides the one being read, which is at most ``max_unit_chars`` (and a word)."""
    f = RepetitionFilter(Reports(), max_period=3, max_unit_chars=60)
    block = "One fish swims here. Two birds fly there. A cat sleeps. "
    assert f.feed(block) == block.rstrip()
    most = 0
    for i in range(0, len(block) * 3, 5):
        f.feed((block * 3)[i : i + 5])
        most = max(most, len(f.held))
    assert 0 < most <= len("One fish swims here. Two birds fly there. ") + len(" A cat sleeps. ")
    assert f.flush("stop") == " "


def test_a_near_repeat_is_missed_when_its_first_word_differs() -> None:
    """A known limit: the sentence was already shown by the time it looked like a repeat."""
    first = "The Eiffel Tower is a famous landmark in Paris, France."
    again = "Yes, the Eiffel Tower is a famous landmark in Paris, France."
    assert _clean(f"{first} {again}")[0] == f"{first} {again}"


# -- real replies ---------------------------------------------------------------------------


def _samples() -> list[dict[str, str]]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("sample", _samples(), ids=lambda s: s["name"])
def test_replies_through_the_whole_chain(sample: dict[str, str]) -> None:
    """Replies like SmolLM2's through all built-in rewriters in the recommended order, whole
    and a few characters at a time. tests/data/replies.jsonl: the ``smollm2_*`` replies are the
    embedded model's own (greedy, no repetition penalty, 350 new tokens), the rest invented."""
    from typing import cast

    from chatcore.events import Message
    from chatcore.services import Services

    context = StepContext(
        message=Message(text="hi", user="u", channel="c", platform="test"),
        services=cast(Services, None),
        report=Reports(),
    )
    reason = cast(FinishReason, sample["finish"])
    text = sample["reply"]
    for size in (len(text) or 1, 1, 3, 7):
        chain = Chain([spec.factory(RewriterSettings()).open(context) for spec in REWRITERS])
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        assert run(chain, pieces, reason) == sample["expected"]
