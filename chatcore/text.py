"""The two text rules at chatcore's edges: what is kept of text coming in, and how text going
out to a terminal is neutralised so that it cannot drive the terminal.

A leaf module (standard library only). Both rules work character by character, so they give the
same result on a stream cut into any pieces.
"""

from __future__ import annotations

import re

_C0_C1 = "".join(chr(c) for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)))

# -- input ----------------------------------------------------------------------------------

_DROPPED_IN_INPUT = re.compile(f"[{re.escape(_C0_C1.replace(chr(9), '').replace(chr(10), ''))}]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_input(text: str) -> str:
    """The one rule for text from users: line breaks become ``\\n``; NUL and every other control
    character except tab and newline are dropped; lone surrogates (undecodable bytes smuggled
    through ``surrogateescape``) become U+FFFD."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _DROPPED_IN_INPUT.sub("", text)
    return _SURROGATE.sub("\ufffd", text)


# -- output to a terminal -------------------------------------------------------------------


def _visible(code: int) -> str:
    if code < 0x20:
        return chr(0x2400 + code)  # the Control Pictures block: ␛ for ESC, ␇ for BEL, ...
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"<{code:02X}>"  # C1 controls have no pictures


_TERMINAL_TABLE = {c: _visible(c) for c in map(ord, _C0_C1) if chr(c) not in "\t\n"}


def terminal_safe(text: str) -> str:
    """``text`` with every control character except tab and newline shown as a harmless symbol
    (ESC as ␛), so that no escape sequence, from a model, a plugin or the input, can retitle or
    clear the terminal, move the cursor or write the clipboard."""
    return _SURROGATE.sub("\ufffd", text.translate(_TERMINAL_TABLE))
