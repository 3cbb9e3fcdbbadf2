"""The terminal adapter (``chatcore chat``): reads what the user types, prints replies as they
stream. Interactive on a terminal; plain, one message per line, when input or output is piped.
"""

from __future__ import annotations

import asyncio
import errno
import getpass
import io
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from chatcore import hookimpl
from chatcore.adapter_api import AdapterContext
from chatcore.config import AdapterSettings, ConfigError, section_settings
from chatcore.events import Message, Notice, Reply, ReplyChunk, ReplyError
from chatcore.files import private_file
from chatcore.text import clean_input, terminal_safe

if TYPE_CHECKING:
    from chatcore.memory.base import UserKey
    from chatcore.services import Services

log = logging.getLogger(__name__)
T = TypeVar("T")
_READ_AHEAD = 64

PLATFORM = "terminal"
QUIT_COMMANDS = {"/quit", "/exit"}
KEYS_HELP = (
    "Keys: Enter sends, Alt-Enter (or Esc then Enter) starts a new line, Up/Down walk the "
    "history, Ctrl-C stops a reply, Ctrl-D or /quit leaves."
)


class TerminalSettings(AdapterSettings):
    """``[adapters.terminal]``: the terminal chat (``chatcore chat``)."""

    user: str = ""
    history_file: str = ""


class OutputClosedError(Exception):
    """Standard output cannot be written (closed pipe, full disk): replies would be lost."""


class _ClosedStream(io.StringIO):
    """Stands for a standard stream that was closed before the program started: reading gives
    nothing, writing fails."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "it was closed")


def login_name() -> str:
    try:
        return getpass.getuser() or "user"
    except (KeyError, OSError):
        return "user"


class TerminalAdapter:
    """Runs a chat between one terminal user and the engine."""

    def __init__(
        self,
        context: AdapterContext,
        *,
        user: str | None = None,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        interactive: bool | None = None,
        prompt_input: Input | None = None,
        prompt_output: Output | None = None,
    ) -> None:
        self.context = context
        self.chat = context.chat
        settings: TerminalSettings = context.settings
        self.user = user or settings.user or login_name()
        self.stdin = stdin or sys.stdin or _ClosedStream()
        self.stdout = stdout or sys.stdout or _ClosedStream()
        self.stderr = stderr or sys.stderr or _ClosedStream()
        if interactive is None:
            interactive = self.stdin.isatty() and self.stdout.isatty()
        self.interactive = interactive
        self.prompt_input = prompt_input
        self.prompt_output = prompt_output
        self.history_path = history_path(settings, context.home)
        self.errors = Console(file=self.stderr, highlight=False, soft_wrap=True)

    async def run(self) -> int:
        try:
            await self._start()
            if self.interactive:
                return await self._run_interactive()
            return await self._run_piped()
        except OutputClosedError as error:
            self._silence_stdout()
            self._error(f"error: cannot write to standard output ({error}); stopping")
            return 1

    # -- output: everything shown goes through these, sanitised ------------------------------

    def _write(self, text: str) -> None:
        """Show reply text on standard output, escape sequences neutralised."""
        try:
            self.stdout.write(terminal_safe(text))
            self.stdout.flush()
        except (OSError, ValueError) as error:
            raise OutputClosedError(getattr(error, "strerror", None) or str(error)) from None

    def _error(self, line: str, *, markup: bool = False) -> None:
        """Show one line on standard error (never fails: there is nowhere else to say it)."""
        with suppress(OSError, ValueError):
            self.errors.print(line if markup else terminal_safe(line), markup=markup)

    def _notice(self, text: str) -> None:
        """Show a notice ("noted: ...") dim on standard error, apart from the replies on
        standard output; as plain text (no markup, no emoji codes), escape sequences
        neutralised."""
        with suppress(OSError, ValueError):
            self.errors.print(Text(terminal_safe(text), style="dim"))

    def _silence_stdout(self) -> None:
        """Point a broken standard output at /dev/null, so that the interpreter's last flush
        does not print a traceback."""
        with suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stdout.fileno())
            os.close(devnull)

    async def _start(self) -> None:
        """Start the app (load the model) behind a spinner with the elapsed time."""
        if not (self.interactive or self.stderr.isatty()):
            await self.chat.ready()
            return
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=self.errors, transient=True) as progress:
            progress.add_task("Loading the model (the first start prepares it once, ~30 s)")
            await self.chat.ready()

    # -- piped: one message per line; a line ending in a backslash continues ----------------------

    async def _run_piped(self) -> int:
        """Plain mode: one message per input line (a trailing backslash continues it)."""
        loop = asyncio.get_running_loop()
        failed = False
        pending: list[str] = []
        lines = _LineReader(self.stdin, loop)
        while (line := await self._until_stopped(lines.next())) is not None:
            if line.undecodable:
                self._error(
                    f"warning: input line {line.number} is not valid UTF-8; the undecodable "
                    "bytes were replaced with \N{REPLACEMENT CHARACTER}"
                )
            cleaned = clean_input(line.text)  # the input rule first, then the line rules
            if cleaned.endswith("\\"):
                pending.append(cleaned[:-1])
                continue
            text = "\n".join([*pending, cleaned]).strip()
            pending = []
            if not text:
                if line.text.strip():  # something was there: say why nothing was sent
                    self._error(
                        f"warning: input line {line.number} holds only control characters; "
                        "nothing was sent"
                    )
                continue
            if text in QUIT_COMMANDS:
                return 1 if failed else 0
            failed |= not await self._reply(text)
        rest = "\n".join(pending).strip()  # input ended inside a continued line
        if rest and not self.context.stopping.is_set():
            failed |= not await self._reply(rest)
        return 1 if failed else 0

    async def _until_stopped(self, awaitable: Awaitable[T]) -> T | None:
        """``awaitable``'s result, or None as soon as the app is shutting down."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.context.stopping.wait())
        try:
            await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
        if not work.done() or work.cancelled():
            return None  # cancelled just now, or before
        if self.context.stopping.is_set():
            work.exception()  # retrieved: shutting down, nobody needs it
            return None
        return work.result()

    # -- interactive --------------------------------------------------------------------------

    async def _run_interactive(self) -> int:
        session = self._session()
        self._error(
            f"[bold]chatcore[/] — you are [cyan]{escape(terminal_safe(self.user))}[/]. "
            "/help lists commands; Ctrl-D or /quit leaves.",
            markup=True,
        )
        while not self.context.stopping.is_set():
            text = await self._until_stopped(_prompt(session))
            if text is _CLEARED:
                continue  # Ctrl-C at the prompt clears the line, like a shell
            if text is None or text is _ENDED:  # shutting down, or Ctrl-D
                break
            text = clean_input(text).strip()
            if not text:
                continue
            if text in QUIT_COMMANDS:
                break
            self._write("bot> ")
            await self._reply_interruptible(text)
            if text == "/help":
                self._write(KEYS_HELP + "\n")
        return 0

    def _session(self) -> PromptSession[str]:
        history: History
        try:
            history = FileHistory(str(private_file(self.history_path)))
        except OSError as error:
            log.warning("input history not kept: %s: %s", self.history_path, error.strerror)
            history = InMemoryHistory()
        bindings = KeyBindings()

        @bindings.add("enter")
        def _submit(event: KeyPressEvent) -> None:
            event.current_buffer.validate_and_handle()

        @bindings.add("escape", "enter")
        def _newline(event: KeyPressEvent) -> None:
            event.current_buffer.insert_text("\n")

        return PromptSession(
            history=history,
            multiline=True,
            key_bindings=bindings,
            prompt_continuation=lambda width, line, wrap: "." * (width - 1) + " ",
            input=self.prompt_input,
            output=self.prompt_output,
        )

    async def _reply_interruptible(self, text: str) -> None:
        """Print the reply; Ctrl-C stops it without leaving the chat."""
        reply = asyncio.ensure_future(self._reply(text))
        # Keys typed meanwhile wait for the next prompt instead of garbling the reply.
        with self.context.interrupts_to(reply.cancel), _no_echo(self.stdin):
            await asyncio.wait([reply])
        if reply.cancelled():
            self._write("\n[stopped]\n")
        elif isinstance(reply.exception(), OutputClosedError):
            reply.result()
        elif reply.exception() is not None:
            error = reply.exception()
            log.error("the reply could not be shown", exc_info=error)
            self._error(f"error: the reply could not be shown: {error}")

    # -- one message ----------------------------------------------------------------------------

    async def _reply(self, text: str) -> bool:
        """Send one message and print its reply, then its notices; False when the reply was
        an error."""
        message = Message(text=text, user=self.user, channel="terminal", platform=PLATFORM)
        ok = True
        cut = False
        notices: list[str] = []
        # In a terminal "bot> " is already on the line, so the reply must end it.
        at_line_start = not self.interactive
        async with aclosing(self.chat.send(message)) as events:
            async for event in events:
                shown = ""
                if isinstance(event, ReplyChunk):
                    shown = event.text
                elif isinstance(event, Reply):
                    shown = "" if event.streamed else event.text
                    cut = event.finish_reason == "length"
                elif isinstance(event, ReplyError):
                    ok = False
                    if not at_line_start:
                        self._write("\n")
                        at_line_start = True
                    self._error(f"error: {event.text}")
                elif isinstance(event, Notice):
                    notices.append(event.text)
                if shown:
                    self._write(shown)
                    at_line_start = shown.endswith("\n")
        if cut:
            if not at_line_start:
                self._write("\n")
                at_line_start = True
            self._error("[dim](reply cut at generation.max_new_tokens)[/]", markup=True)
        if not at_line_start:
            self._write("\n")
        for notice in notices:
            self._notice(notice)
        return ok


_CLEARED = "\x00cleared"
_ENDED = "\x00ended"
"""What the prompt gives for Ctrl-C and Ctrl-D (NUL never survives the input rule)."""


async def _prompt(session: PromptSession[str]) -> str:
    """The next input, or ``_CLEARED`` / ``_ENDED``. prompt_toolkit raises KeyboardInterrupt
    for Ctrl-C: raised in a task, that would stop the event loop itself."""
    try:
        return await session.prompt_async("you> ")
    except KeyboardInterrupt:
        return _CLEARED
    except EOFError:
        return _ENDED


@dataclass(frozen=True, slots=True)
class _Line:
    """One line of piped input: its number, its text without the line break, and whether it
    held bytes that are not UTF-8 (replaced by U+FFFD)."""

    number: int
    text: str
    undecodable: bool = False


class _LineReader:
    """Reads a stream line by line in a daemon thread, so a blocked read never keeps the
    program from exiting. Bytes are decoded here, as UTF-8 whatever the locale: an undecodable
    byte is replaced and reported, never taken for the end of the input. At most
    ``_READ_AHEAD`` lines wait to be handled: a huge input never fills memory."""

    def __init__(self, stream: TextIO, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop
        self._lines: asyncio.Queue[_Line | None] = asyncio.Queue()
        self._room = threading.Semaphore(_READ_AHEAD)
        threading.Thread(target=self._pump, name="chatcore-stdin", daemon=True).start()

    async def next(self) -> _Line | None:
        """The next line; None at the end of the input."""
        line = await self._lines.get()
        self._room.release()
        return line

    def _pump(self) -> None:
        raw = getattr(self._stream, "buffer", None)
        read: Callable[[], bytes | str] = raw.readline if raw is not None else self._stream.readline
        try:
            for number, line in enumerate(iter(read, b"" if raw is not None else ""), 1):
                if not self._deliver(_decode(number, line)):
                    return
        except (OSError, ValueError):
            pass  # the stream was closed under us: treat it as the end
        self._deliver(None)

    def _deliver(self, item: _Line | None) -> bool:
        """Queue ``item`` once there is room; False when the event loop is gone."""
        while not self._room.acquire(timeout=0.5):
            if self._loop.is_closed():
                return False
        try:
            self._loop.call_soon_threadsafe(self._lines.put_nowait, item)
        except RuntimeError:  # the event loop is closed
            return False
        return True


def _decode(number: int, line: bytes | str) -> _Line:
    if isinstance(line, str):
        return _Line(number, line.removesuffix("\n").removesuffix("\r"))
    line = line.removesuffix(b"\n").removesuffix(b"\r")
    try:
        return _Line(number, line.decode("utf-8"))
    except UnicodeDecodeError:
        return _Line(number, line.decode("utf-8", "replace"), undecodable=True)


@contextmanager
def _no_echo(stream: TextIO) -> Iterator[None]:
    """Turn terminal echo off while a reply prints, so typed-ahead keys do not garble it."""
    try:
        import termios
    except ImportError:  # not a POSIX terminal
        yield
        return
    try:
        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation, termios.error):
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


@hookimpl
def register_adapters(register: Callable[..., None]) -> None:
    register("terminal", TerminalAdapter, settings=TerminalSettings)


def history_path(settings: TerminalSettings, home: Path) -> Path:
    """The input history file: ``history_file``, else ``<home>/terminal_history``."""
    return Path(settings.history_file or home / "terminal_history").expanduser()


@hookimpl
def user_erased(user: UserKey, services: Services) -> None:
    """The input history holds what was typed here: empty it when a terminal user's data is
    erased. It is one file for everyone who chats in this terminal, so it is emptied whole."""
    if user.platform != PLATFORM:
        return
    try:
        settings = section_settings(services.settings, PLATFORM, TerminalSettings)
    except ConfigError:
        settings = TerminalSettings()
    path = history_path(settings, services.settings.home_path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))  # emptied, its private mode kept
    except FileNotFoundError:
        return
    log.info("emptied the terminal input history %s", path)
