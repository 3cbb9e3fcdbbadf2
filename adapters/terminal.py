"""The terminal adapter (``chatcore chat``): reads what the user types, prints replies as they
stream. Interactive on a terminal; plain, one message per line, when input or output is piped.
"""

from __future__ import annotations

import asyncio
import getpass
import io
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import aclosing, contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from chatcore import hookimpl
from chatcore.app import AdapterContext
from chatcore.events import Message, Reply, ReplyChunk, ReplyError

log = logging.getLogger(__name__)

PLATFORM = "terminal"
QUIT_COMMANDS = {"/quit", "/exit"}
KEYS_HELP = (
    "Keys: Enter sends, Alt-Enter (or Esc then Enter) starts a new line, Up/Down walk the "
    "history, Ctrl-C stops a reply, Ctrl-D or /quit leaves."
)


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
        self.engine = context.engine
        settings = context.settings.adapters.terminal
        self.user = user or settings.user or login_name()
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        if interactive is None:
            interactive = self.stdin.isatty() and self.stdout.isatty()
        self.interactive = interactive
        self.prompt_input = prompt_input
        self.prompt_output = prompt_output
        history_file = settings.history_file or str(context.settings.home_path / "terminal_history")
        self.history_path = Path(history_file).expanduser()
        self.errors = Console(file=self.stderr, highlight=False, soft_wrap=True)

    async def run(self) -> int:
        await self._start()
        if self.interactive:
            return await self._run_interactive()
        return await self._run_piped()

    async def _start(self) -> None:
        """Start the app (load the model) behind a spinner with the elapsed time."""
        if not (self.interactive or self.stderr.isatty()):
            await self.context.start()
            return
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=self.errors, transient=True) as progress:
            progress.add_task("Loading the model (the first start prepares it once, ~30 s)")
            await self.context.start()

    # -- piped: one message per line; a line ending in a backslash continues ----------------------

    async def _run_piped(self) -> int:
        """Plain mode: one message per input line (a trailing backslash continues it)."""
        loop = asyncio.get_running_loop()
        failed = False
        pending: list[str] = []
        lines = _read_lines(self.stdin, loop)
        while True:
            line = await lines.get()
            if line is None:
                break
            line = line.rstrip("\n")
            if line.endswith("\\"):
                pending.append(line[:-1])
                continue
            text = "\n".join([*pending, line]).strip()
            pending = []
            if not text:
                continue
            if text in QUIT_COMMANDS:
                break
            failed |= not await self._reply(text)
        rest = "\n".join(pending).strip()  # input ended inside a continued line
        if rest:
            failed |= not await self._reply(rest)
        return 1 if failed else 0

    # -- interactive --------------------------------------------------------------------------

    async def _run_interactive(self) -> int:
        session = self._session()
        self.errors.print(
            f"[bold]chatcore[/] — you are [cyan]{self.user}[/]. /help lists commands; "
            "Ctrl-D or /quit leaves.",
        )
        while True:
            try:
                text = await session.prompt_async("you> ")
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line, like a shell
            except EOFError:
                break
            text = text.strip()
            if not text:
                continue
            if text in QUIT_COMMANDS:
                break
            self.stdout.write("bot> ")
            self.stdout.flush()
            await self._reply_interruptible(text)
            if text == "/help":
                self.stdout.write(KEYS_HELP + "\n")
        self.stdout.flush()
        return 0

    def _session(self) -> PromptSession[str]:
        history: History
        try:
            self.history_path.parent.mkdir(parents=True, exist_ok=True)
            history = FileHistory(str(self.history_path))
        except OSError:
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
        loop = asyncio.get_running_loop()
        reply = asyncio.ensure_future(self._reply(text))
        restore: Callable[[], Any] | None = None
        try:
            loop.add_signal_handler(signal.SIGINT, reply.cancel)
            restore = lambda: loop.remove_signal_handler(signal.SIGINT)  # noqa: E731
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread or no signal support: Ctrl-C ends the program instead
        try:
            with _no_echo(self.stdin):  # keys typed meanwhile wait for the next prompt
                await asyncio.wait([reply])
        finally:
            if restore is not None:
                restore()
        if reply.cancelled():
            self.stdout.write("\n[stopped]\n")
            self.stdout.flush()
        elif reply.exception() is not None:
            error = reply.exception()
            log.error("the reply could not be shown", exc_info=error)
            self.errors.print(f"error: the reply could not be shown: {error}", markup=False)

    # -- one message ----------------------------------------------------------------------------

    async def _reply(self, text: str) -> bool:
        """Send one message and print its reply; False when the reply was an error."""
        message = Message(text=text, user=self.user, channel="terminal", platform=PLATFORM)
        ok = True
        cut = False
        # In a terminal "bot> " is already on the line, so the reply must end it.
        at_line_start = not self.interactive
        async with aclosing(self.engine.handle(message)) as events:
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
                        self.stdout.write("\n")
                        at_line_start = True
                    self.stdout.flush()
                    self.errors.print(f"error: {event.text}", markup=False)
                if shown:
                    self.stdout.write(shown)
                    self.stdout.flush()
                    at_line_start = shown.endswith("\n")
        if cut:
            if not at_line_start:
                self.stdout.write("\n")
                at_line_start = True
            self.stdout.flush()
            self.errors.print("[dim](reply cut at generation.max_new_tokens)[/]")
        if not at_line_start:
            self.stdout.write("\n")
        self.stdout.flush()
        return ok


def _read_lines(stream: TextIO, loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Read ``stream`` line by line in a daemon thread (None at the end), so a blocked read
    never keeps the program from exiting on Ctrl-C."""
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in iter(stream.readline, ""):
                loop.call_soon_threadsafe(lines.put_nowait, line)
        except (OSError, ValueError):
            pass  # the stream was closed under us: treat it as the end
        finally:
            with suppress(RuntimeError):  # the event loop is already gone
                loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=pump, name="chatcore-stdin", daemon=True).start()
    return lines


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
def register_adapters(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("terminal", TerminalAdapter)
