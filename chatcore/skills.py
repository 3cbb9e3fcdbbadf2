"""Skills: the value types a plugin registers with ``register_skills``, and reading a skill's
options from the text after ``/name``. The engine runs skills (``chatcore.pipeline.skill``).

A leaf module apart from the types it names for hints, so plugins can import it freely.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from chatcore.events import ChatMessage, Message, ReplyError
    from chatcore.services import Services

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_OPTION = re.compile(r"^[a-z][a-z0-9-]*$")

OptionValue = str | int | float | bool
OptionKind = Literal["text", "int", "float", "flag"]
_CONVERT: dict[str, Callable[[str], OptionValue]] = {"text": str, "int": int, "float": float}


class SkillUsageError(ValueError):
    """The options after ``/name`` do not fit the skill; the text says what to change."""


class GenerationStopped(Exception):
    """``generate`` could not finish: the bot is busy, the model ran out of time or failed.
    ``error`` is what the user hears when the skill lets this pass (most should)."""

    def __init__(self, error: ReplyError) -> None:
        super().__init__(error.text)
        self.error = error


@dataclass(frozen=True, slots=True)
class SkillOption:
    """One flag a skill accepts: ``--name value``, or ``--name`` alone for a ``flag``."""

    name: str
    help: str
    kind: OptionKind = "text"
    default: OptionValue | None = None
    choices: tuple[str, ...] = ()
    """For ``text`` options: the values allowed (empty: any)."""

    def __post_init__(self) -> None:
        if not _OPTION.match(self.name):
            raise ValueError(f"option name {self.name!r} must be lower case letters, digits or '-'")
        if self.kind not in ("text", "int", "float", "flag"):
            raise ValueError(f"option --{self.name}: kind must be text, int, float or flag")

    def read(self, raw: str) -> OptionValue:
        """The value of ``--name raw``; ``SkillUsageError`` when it does not fit."""
        try:
            value = _CONVERT[self.kind](raw)
        except ValueError:
            raise SkillUsageError(
                f"--{self.name} takes a number ({self.kind}), not {raw!r}"
            ) from None
        if self.choices and value not in self.choices:
            allowed = ", ".join(self.choices)
            raise SkillUsageError(f"--{self.name} is one of {allowed}, not {raw!r}")
        return value


class Generate(Protocol):
    """``request.generate(prompt_or_messages, **options)``: the model's reply as it streams."""

    def __call__(
        self, prompt: str | Sequence[ChatMessage], **options: Any
    ) -> AsyncIterator[str]: ...


@dataclass(frozen=True, slots=True)
class SkillRequest:
    """What a skill handler gets: the request, the conversation and a way to generate.

    ``generate`` takes a prompt (sent as one user message) or a list of ``ChatMessage`` (sent as
    they are) and ``[generation]`` settings to change for this call (``max_new_tokens=64``); it
    streams the model's text through the same path as chat: the active backend, the generation
    slots, the timeout and the user's quota. It raises ``GenerationStopped`` when it cannot
    finish. What the handler yields is the reply: the output steps check it and the turn is
    stored, as for chat."""

    text: str
    """The text after the skill's name and options."""
    options: Mapping[str, OptionValue]
    """The skill's options by name: the value given, else the default (a flag: False); an
    option with no default that was not given is absent."""
    message: Message
    history: Sequence[ChatMessage]
    """The conversation's recent stored messages, oldest first (this message not included)."""
    preferences: Mapping[str, str]
    """The user's stored preferences (``language``, ``tone``, ...), empty when none."""
    services: Services
    generate: Generate
    count_tokens: Callable[[str], int]
    """The tokens a text costs in a prompt, with the active model's tokenizer."""
    prompt_budget: int
    """The most tokens one prompt may take (the context window less the reply's room)."""


SkillHandler = Callable[[SkillRequest], AsyncIterator[str]]


@dataclass(frozen=True, slots=True)
class Skill:
    """A skill: ``/name [--option value ...] text`` runs ``handler``, an async generator that
    yields the reply's text piece by piece. ``examples`` are requests it answers, in the user's
    words: ``/name --help`` shows them, and natural-language routing will match against them."""

    name: str
    description: str
    handler: SkillHandler
    options: tuple[SkillOption, ...] = ()
    examples: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"skill name {self.name!r} must be lower-case letters, digits, '-' or '_', "
                "starting with a letter, and without the leading '/'"
            )
        if not self.description.strip() or "\n" in self.description.strip():
            raise ValueError(f"skill /{self.name} needs a one-line description")
        names = [option.name for option in self.options]
        if len(set(names)) != len(names) or "help" in names:
            raise ValueError(f"skill /{self.name}: option names must be unique and not 'help'")
        if not callable(self.handler):
            raise ValueError(f"skill /{self.name}: the handler is not callable")

    def parse(self, args: str) -> tuple[dict[str, OptionValue], str]:
        """Split the text after ``/name`` into the options (leading ``--name value`` pairs, all
        filled in with defaults) and the rest, kept as written. ``SkillUsageError`` when an
        option is unknown or its value does not fit."""
        by_name = {option.name: option for option in self.options}
        values: dict[str, OptionValue] = {}
        for each in self.options:
            default = False if each.kind == "flag" else each.default
            if default is not None:
                values[each.name] = default
        rest = args.strip()
        while rest.startswith("--"):  # each pass consumes one or two words: bounded by the text
            head, *more = rest.split(None, 1)
            tail = more[0] if more else ""
            if head == "--":
                rest = tail
                break
            option = by_name.get(head[2:])
            if option is None:
                known = ", ".join(f"--{name}" for name in by_name) or "none"
                raise SkillUsageError(f"/{self.name} has no option {head} (options: {known})")
            if option.kind == "flag":
                values[option.name], rest = True, tail
                continue
            words = _split_first(tail)
            if words is None:
                raise SkillUsageError(f"{head} needs a value")
            raw, rest = words
            values[option.name] = option.read(raw)
        return values, rest

    def help_text(self) -> str:
        """What ``/name --help`` shows: the description, the options and the examples."""
        lines = [f"/{self.name} - {self.description}"]
        usage = " ".join(
            f"[--{o.name}{'' if o.kind == 'flag' else ' ' + o.kind.upper()}]" for o in self.options
        )
        lines.append(f"Usage: /{self.name} {usage + ' ' if usage else ''}TEXT")
        if self.options:
            lines.append("Options:")
            for o in self.options:
                extra = [f"one of {', '.join(o.choices)}"] if o.choices else []
                if o.default is not None:
                    extra.append(f"default {o.default}")
                suffix = f" ({'; '.join(extra)})" if extra else ""
                lines.append(f"  --{o.name} - {o.help}{suffix}")
        if self.examples:
            lines.append("Examples:")
            lines += [f"  {example}" for example in self.examples]
        return "\n".join(lines)


def _split_first(text: str) -> tuple[str, str] | None:
    """The first word of ``text`` (quotes allowed: ``"New York"``) and the rest as written."""
    text = text.strip()
    if not text:
        return None
    if text[0] in "\"'":
        end = text.find(text[0], 1)
        if end > 0:
            return text[1:end], text[end + 1 :].strip()
    word, *rest = text.split(None, 1)
    return word, rest[0] if rest else ""
