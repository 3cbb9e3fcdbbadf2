"""The built-in rewriters role_markers, whitespace, code_fences and unfinished: what each
changes on replies like SmolLM2's, what it leaves alone, and that any split of the stream gives
the same result while text is still released promptly."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcore.events import FinishReason, Message
from chatcore.pipeline.repetition import RepetitionFilter
from chatcore.pipeline.rewrite import (
    REWRITERS,
    CodeFenceFilter,
    RoleMarkerFilter,
    UnfinishedFilter,
    WhitespaceFilter,
)
from chatcore.pipeline.steps import RewriterSettings, StepContext, TextFilter
from chatcore.pipeline.text import FenceTracker
from chatcore.services import Services
from tests.rewrite_helpers import Chain, Reports, run, run_whole, split

Make = Callable[[Reports], TextFilter]

FILTERS: dict[str, Make] = {
    "role_markers": lambda r: RoleMarkerFilter(r),
    "repetition": lambda r: RepetitionFilter(r, max_period=3, max_unit_chars=60),
    "whitespace": lambda r: WhitespaceFilter(r),
    "code_fences": lambda r: CodeFenceFilter(r),
    "unfinished": lambda r: UnfinishedFilter(r),
}

# Pieces that meet every rule's edge: markers, fences, sentence ends, whitespace runs, loops.
FRAGMENTS = [
    "Hello",
    " world",
    ".",
    "!",
    "? ",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n\n",
    "```",
    "```python\n",
    "`",
    "    ",
    "Assistant:",
    "User: ",
    "### Response:",
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "<|",
    "|>",
    "<",
    "im_start",
    "1. ",
    "- ",
    "e.g. ",
    "the ",
    "I am sorry. ",
    "It is a nice day today. ",
    "x = 1\n",
    "…",
    '."',
]

texts = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)
cut_lists = st.lists(st.integers(min_value=0, max_value=400), max_size=12)
reasons = st.sampled_from(["stop", "length", "cancelled"])


@pytest.mark.parametrize("name", list(FILTERS))
@settings(max_examples=150, deadline=None)
@given(text=texts, cuts=cut_lists, reason=reasons)
def test_any_split_gives_the_same_output_and_reports(
    name: str, text: str, cuts: list[int], reason: FinishReason
) -> None:
    make = FILTERS[name]
    whole, whole_reports = run_whole(make, text, reason)
    reports = Reports()
    assert run(make(reports), split(text, cuts), reason) == whole
    assert reports.categories == whole_reports


@settings(max_examples=150, deadline=None)
@given(text=texts, cuts=cut_lists, reason=reasons)
def test_the_chain_in_the_recommended_order_is_split_proof(
    text: str, cuts: list[int], reason: FinishReason
) -> None:
    def chain() -> Chain:
        return Chain([FILTERS[spec.name](Reports()) for spec in REWRITERS])

    assert run(chain(), split(text, cuts), reason) == run(chain(), [text], reason)


def _released_after_each_piece(make: Make, pieces: list[str]) -> list[tuple[str, str]]:
    """(text fed so far, text released so far) after each piece."""
    filter_ = make(Reports())
    fed = out = ""
    steps = []
    for piece in pieces:
        fed += piece
        out += filter_.feed(piece)
        steps.append((fed, out))
    return steps


# -- role markers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Assistant: The capital of France is Paris.", "The capital of France is Paris."),
        ("assistant:\nSure! Here you go.", "Sure! Here you go."),
        ("<|im_start|>assistant\nHello! How can I help?", "Hello! How can I help?"),
        (
            "### Response:\nPhotosynthesis turns light into sugar.",
            "Photosynthesis turns light into sugar.",
        ),
        ("User: What is 2+2?\nAssistant: 4", "What is 2+2?\nAssistant: 4"),
        ("\n\nAssistant: Assistant: Hi.", "Hi."),
        ("Paris.<|im_end|>\n<|im_start|>user\nAnd Spain?", "Paris."),
        ("Hi<|endoftext|>garbage", "Hi"),
        ("A <|pad|>token.", "A token."),
        ("Usernames are unique.", "Usernames are unique."),
        ("Users: 5", "Users: 5"),
        ("In a chat, User: hi\nAssistant: hello", "In a chat, User: hi\nAssistant: hello"),
        ("Use `x <| y` and a < b.", "Use `x <| y` and a < b."),
        ("```\n<|im_end|> is ChatML\n```\nDone<|im_end|>x", "```\n<|im_end|> is ChatML\n```\nDone"),
    ],
)
def test_role_markers(reply: str, expected: str) -> None:
    assert run_whole(lambda r: RoleMarkerFilter(r), reply)[0] == expected


def test_role_markers_report_and_flag_the_end_of_turn() -> None:
    reports = Reports()
    f = RoleMarkerFilter(reports)
    assert run(f, ["Assistant: Paris.<|im", "_end|>", "\nUser: and?"]) == "Paris."
    assert f.ended
    assert reports.categories == ["role_marker", "end_of_turn"]


def test_role_markers_can_keep_going_after_an_end_token() -> None:
    f = RoleMarkerFilter(Reports(), cut_at_end_token=False)
    assert run(f, ["Paris.<|im_end|> More."]) == "Paris. More."
    assert not f.ended


def test_a_marker_split_across_pieces_is_caught() -> None:
    for pieces in (["Assis", "tant", ":", " Hi"], ["<|im_", "start|>assis", "tant\nHi"]):
        assert run(RoleMarkerFilter(Reports()), pieces) == "Hi"


@settings(max_examples=100, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(["Hello", " there", ".", "\n", " ", "Use", "r", "Assist", "###", "x"]),
        max_size=25,
    ).map("".join),
    cuts=cut_lists,
)
def test_role_markers_hold_back_at_most_a_marker(text: str, cuts: list[int]) -> None:
    for fed, out in _released_after_each_piece(FILTERS["role_markers"], split(text, cuts)):
        # No ":" and no "<": nothing here is a marker, so all comes out, a marker's length late.
        assert fed.startswith(out)
        assert len(fed[len(out) :].lstrip()) < len("### assistant:")


# -- whitespace -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("\n\n Sure! Here is the answer.  \n", "Sure! Here is the answer."),
        ("First point.\n\n\n\n\nSecond point.", "First point.\n\nSecond point."),
        ("Line one.   \nLine two.\t\n", "Line one.\nLine two."),
        (
            "Tips:\n\n  - Drink water.\n    - Also tea.",
            "Tips:\n\n  - Drink water.\n    - Also tea.",
        ),
        ("Two  spaces stay.", "Two  spaces stay."),
        (
            "Code:\n\n\n```python\ndef f():   \n\n\n\n    return 1  \n```\n\n\n\nDone.   ",
            "Code:\n\n```python\ndef f():   \n\n\n\n    return 1  \n```\n\nDone.",
        ),
        ("```\nx  \n\n\n", "```\nx  \n\n\n"),
    ],
)
def test_whitespace(reply: str, expected: str) -> None:
    assert run_whole(lambda r: WhitespaceFilter(r), reply)[0] == expected


def test_whitespace_reports_once_and_only_on_a_change() -> None:
    assert run_whole(lambda r: WhitespaceFilter(r), " a  \n\n\n\nb ")[1] == ["whitespace"]
    assert run_whole(lambda r: WhitespaceFilter(r), "a\n\nb")[1] == []


@settings(max_examples=150, deadline=None)
@given(text=texts, cuts=cut_lists)
def test_whitespace_holds_back_only_whitespace(text: str, cuts: list[int]) -> None:
    for fed, out in _released_after_each_piece(FILTERS["whitespace"], split(text, cuts)):
        assert "".join(out.split()) == "".join(fed.split())


# -- code fences ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Here:\n```python\nprint('hi')", "Here:\n```python\nprint('hi')\n```"),
        ("Here:\n```python\nprint('hi')\n", "Here:\n```python\nprint('hi')\n```"),
        ("````md\n```\nnested\n```\n", "````md\n```\nnested\n```\n````"),
        ("Closed:\n```\nx\n```", "Closed:\n```\nx\n```"),
        ("Closed:\n  ```js\n  x()\n  ```\nDone.", "Closed:\n  ```js\n  x()\n  ```\nDone."),
        ("Inline ```x``` is no fence.", "Inline ```x``` is no fence."),
        ("Two:\n```\na\n```\ntext\n```\nb", "Two:\n```\na\n```\ntext\n```\nb\n```"),
    ],
)
def test_code_fences(reply: str, expected: str) -> None:
    assert run_whole(lambda r: CodeFenceFilter(r), reply)[0] == expected


def test_code_fences_report_a_closed_fence() -> None:
    assert run_whole(lambda r: CodeFenceFilter(r), "```\nx")[1] == ["unclosed_fence"]
    assert run_whole(lambda r: CodeFenceFilter(r), "```\nx\n```\n")[1] == []


@given(text=texts, cuts=cut_lists)
def test_code_fences_hold_nothing_back(text: str, cuts: list[int]) -> None:
    for fed, out in _released_after_each_piece(FILTERS["code_fences"], split(text, cuts)):
        assert out == fed


def test_fence_tracker_marks_code() -> None:
    text = "a\n```py\nb\n```\nc"
    fences = FenceTracker()
    code = ""
    for ch in text:
        was = fences.inside
        fences.step(ch)
        code += ch if was or fences.inside else "."
    assert code == "....." + "py\nb\n```\n" + "."


# -- unfinished -----------------------------------------------------------------------------

CUT = "Bread needs flour, water, salt and yeast. Mix them and knead the dough for ten "


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (CUT, "Bread needs flour, water, salt and yeast."),
        ("The sky is blue because of Rayleigh scat", "The sky is blue because of Rayleigh scat…"),
        ("Tips:\n1. Drink water.\n2. Sleep", "Tips:\n1. Drink water."),
        ("Tips:\n- Drink water\n- Sleep eight hou", "Tips:\n- Drink water"),
        ("Steps:\n1. Open it.\n2.", "Steps:\n1. Open it."),
        ("It ends here.", "It ends here."),
        ('He said "stop."', 'He said "stop."'),
        ("Was it cut? ", "Was it cut? "),
        ("Use a tool, e.g. a saw", "Use a tool, e.g. a saw…"),
        (
            "Example:\n```python\ndef f(x):\n    return (x",
            "Example:\n```python\ndef f(x):\n    return (x",
        ),
        ("Code:\n```\nx\n```\nThis prints", "Code:\n```\nx\n```\n"),
    ],
)
def test_unfinished_when_the_limit_cut_the_reply(reply: str, expected: str) -> None:
    assert run_whole(lambda r: UnfinishedFilter(r), reply, "length")[0] == expected


@pytest.mark.parametrize("reason", ["stop", "cancelled"])
def test_unfinished_leaves_replies_that_ended_otherwise(reason: FinishReason) -> None:
    assert run_whole(lambda r: UnfinishedFilter(r), CUT, reason) == (CUT, [])


def test_unfinished_reports_and_its_mark_can_be_turned_off() -> None:
    assert run_whole(lambda r: UnfinishedFilter(r), CUT, "length")[1] == ["unfinished_sentence"]
    f = UnfinishedFilter(Reports(), mark="")
    assert run(f, ["Only a fragm"], "length") == "Only a fragm"


def test_unfinished_releases_each_sentence_once_it_ends() -> None:
    f = UnfinishedFilter(Reports())
    assert f.feed("One. Tw") == "One."
    assert f.feed("o.") == ""
    assert f.feed(" Three") == " Two."
    assert f.feed("\nFour") == " Three"


@settings(max_examples=150, deadline=None)
@given(text=texts, cuts=cut_lists)
def test_unfinished_holds_back_at_most_the_current_line(text: str, cuts: list[int]) -> None:
    for fed, out in _released_after_each_piece(FILTERS["unfinished"], split(text, cuts)):
        assert fed.startswith(out)
        assert "\n" not in fed[len(out) + 1 :]


# -- specs ----------------------------------------------------------------------------------


def test_specs_are_named_ordered_and_open_filters() -> None:
    assert [s.name for s in REWRITERS] == [
        "role_markers",
        "repetition",
        "whitespace",
        "code_fences",
        "unfinished",
    ]
    orders = [s.settings().order for s in REWRITERS]
    assert orders == sorted(orders)
    reports = Reports()
    context = StepContext(
        message=Message(text="hi", user="u", channel="c", platform="test"),
        services=cast(Services, None),
        report=reports,
    )
    for spec in REWRITERS:
        assert spec.help
        for settings_ in (RewriterSettings(), spec.settings()):
            f = spec.factory(settings_).open(context)
            assert run(f, ["Assistant: ok"], "stop").endswith("ok")
    assert ("role_marker", "changed") in reports.calls


def test_settings_of_a_rewriter_come_through() -> None:
    spec = next(s for s in REWRITERS if s.name == "unfinished")
    settings_ = spec.settings.model_validate({"mark": " [cut]"})
    context = StepContext(
        message=Message(text="hi", user="u", channel="c", platform="test"),
        services=cast(Services, None),
        report=Reports(),
    )
    f = spec.factory(settings_).open(context)
    assert run(f, ["A fragment"], "length") == "A fragment [cut]"


def _budgeted(left: list[int]) -> tuple[UnfinishedFilter, list[str]]:
    reports: list[str] = []
    unfinished = UnfinishedFilter(
        lambda category, _action: reports.append(category),
        tokens_left=lambda: left[0],
        hold_within=3,
    )
    return unfinished, reports


def test_unfinished_streams_until_the_end_is_near_then_holds_the_sentence() -> None:
    left = [10]
    unfinished, reports = _budgeted(left)
    shown = [unfinished.feed(word) for word in ["It ", "was ", "a "]]
    assert shown == ["It ", "was ", "a "]  # far from the limit: nothing held back
    assert unfinished.feed("day. ") == "day. "
    left[0] = 2  # near the limit: the sentence now being written is held
    assert [unfinished.feed(word) for word in ["Then ", "the "]] == ["", ""]
    assert unfinished.flush("length") == ""
    assert reports == ["unfinished_sentence"]


def test_a_sentence_partly_shown_before_the_cut_is_marked_not_taken_back() -> None:
    left = [10]
    unfinished, reports = _budgeted(left)
    assert unfinished.feed("It was a day. Then the ") == "It was a day. Then the "
    left[0] = 0
    assert unfinished.feed("rain ") == ""
    assert unfinished.flush("length") == "rain…"
    assert reports == ["unfinished_sentence"]
    finished, _ = _budgeted([10])
    finished.feed("It was a day. Then the ")
    assert finished.flush("stop") == ""  # not cut: nothing to mark
