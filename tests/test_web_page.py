"""The web chat page end to end in real headless Chromium (Debian's ``chromium``, driven by
Playwright): it streams a reply, shows HTML from the model as text, reconnects after a drop.

A screenshot of the phone-sized page is kept in tests/artifacts/ (ignored by git).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from playwright.async_api import Browser, Dialog, WebSocketRoute, async_playwright, expect

from chatcore import hookimpl
from chatcore.config import GenerationSettings
from chatcore.generation.fake import FakeBackend
from chatcore.generation.types import ChatMessage, Chunk
from tests.conftest import RUN_ENVIRONMENT
from tests.websocket_helpers import WAIT, Serve, serve

__all__ = ["serve"]  # fixtures

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
XSS = "<img src=x onerror=alert(1)>"

expect.set_options(timeout=WAIT * 1000)


class PausingBackend(FakeBackend):
    """A fake backend that stops streaming after the chunk ``pause_after`` until ``resume``."""

    def __init__(self, pause_after: str) -> None:
        super().__init__()
        self.pause_after = pause_after
        self.resume = asyncio.Event()

    async def stream(
        self, messages: Sequence[ChatMessage], options: GenerationSettings
    ) -> AsyncIterator[Chunk]:
        async for chunk in super().stream(messages, options):
            yield chunk
            if chunk.text == self.pause_after:
                await self.resume.wait()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:  # `make test` installs it; a missing browser is a failure, not a pass
        if RUN_ENVIRONMENT.get("CHATCORE_SKIP_BROWSER") == "1":
            pytest.skip("chromium is not installed and CHATCORE_SKIP_BROWSER=1")
        pytest.fail(
            "chromium is not installed: apt-get install chromium (or run `make test`, which "
            "installs it), or set CHATCORE_SKIP_BROWSER=1 to skip the browser tests",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


async def test_the_page_streams_replies_and_shows_html_as_text(
    serve: Serve, browser: Browser
) -> None:
    backend = PausingBackend(pause_after=" from")
    backend.enqueue(["Hello", " from", " the", " model."])
    backend.enqueue(["Look: ", XSS, " and <b>bold</b>", " & <script>alert(2)</script>"])
    served = await serve(backend)
    page = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    dialogs: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    await page.goto(f"{served.base}/#token=secret-1")
    await expect(page.locator("#status")).to_have_text("Connected as alice")
    assert "token" not in page.url  # taken out of the address bar, kept in the browser only
    assert await page.evaluate("sessionStorage.getItem('chatcore.token')") == "secret-1"

    await page.fill("#text", "hello there")
    await page.press("#text", "Enter")
    await expect(page.locator(".msg.user")).to_have_text("hello there")
    first = page.locator(".msg.bot").nth(0)
    await expect(first).to_have_text("Hello from")  # half-way: the rest has not streamed yet
    await expect(first).to_have_class("msg bot streaming")
    await expect(page.locator("#stop")).to_be_enabled()
    backend.resume.set()
    await expect(first).to_have_text("Hello from the model.")
    await expect(first).to_have_class("msg bot")

    await page.fill("#text", "show me some html")
    await page.click("#send")
    second = page.locator(".msg.bot").nth(1)
    whole = "Look: " + XSS + " and <b>bold</b> & <script>alert(2)</script>"
    await expect(second).to_have_text(whole)
    assert await page.locator("#log img, #log b, #log script").count() == 0
    await page.wait_for_timeout(300)  # time for an onerror handler to have fired, had it run
    assert dialogs == []

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web_page.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    # A drop: the page says so, reconnects by itself, and chats again.
    await served.adapter.hub.close_all(1001, "test drop")
    await expect(page.locator("#notice")).to_contain_text("restarted")
    await expect(page.locator("#status")).to_have_text("Connected as alice")
    await page.fill("#text", "back again")
    await page.press("#text", "Enter")
    await expect(page.locator(".msg.bot").nth(2)).to_have_text("You said: back again")


class _HtmlNotice:
    """A plugin whose notice holds HTML: it must show as text."""

    @hookimpl
    def reply_finished(self) -> str:
        return "noted: " + XSS + " <b>bold</b>"


class _HoldFirstNotices:
    """Between the page and the server: the notice frames of the first message answered are
    held back until a frame of another message has reached the page, so that they arrive
    after the next reply started."""

    def __init__(self) -> None:
        self.first: str | None = None
        self.held: list[str | bytes] = []
        self.released = False

    async def route(self, page_side: WebSocketRoute) -> None:
        server = page_side.connect_to_server()

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "reply" and self.first is None:
                self.first = frame["id"]
            if frame.get("type") == "notice" and frame["id"] == self.first and not self.released:
                self.held.append(message)
                return
            page_side.send(message)
            if self.first is not None and frame.get("id") not in (None, self.first):
                self.released = True
                for held in self.held:
                    page_side.send(held)

        server.on_message(from_server)


async def test_notices_show_as_notes_under_their_reply_as_text(
    serve: Serve, browser: Browser
) -> None:
    served = await serve()
    served.app.plugins.add_plugin(_HtmlNotice(), "html-notice")
    await served.app.plugins.collect("html-notice")
    page = await browser.new_page()
    between = _HoldFirstNotices()
    await page.route_web_socket(re.compile(r"^ws://"), between.route)
    await page.goto(f"{served.base}/#token=secret-1")
    await expect(page.locator("#status")).to_have_text("Connected as alice")
    await page.fill("#text", "call me Sam")
    await page.press("#text", "Enter")
    await expect(page.locator(".msg.bot").nth(0)).to_have_text("You said: call me Sam")
    await page.fill("#text", "/help")  # a command: no notes of its own
    await page.press("#text", "Enter")
    await expect(page.locator(".note")).to_have_count(2)
    assert len(between.held) == 2 and between.released  # they came after the /help reply
    await expect(page.locator(".msg.bot").nth(1)).to_contain_text("/remember")
    order = await page.eval_on_selector_all("#log > *", "nodes => nodes.map(n => n.className)")
    assert order == ["msg user", "msg bot", "note", "note", "msg user", "msg bot"]
    texts = await page.locator(".msg.bot + .note, .msg.bot + .note + .note").all_text_contents()
    assert sorted(texts) == sorted(
        [
            "noted: I'll call you Sam — say \"don't call me Sam\" to undo.",
            f"noted: {XSS} <b>bold</b>",
        ]
    )
    assert await page.locator("#log img, #log b").count() == 0


async def test_the_page_asks_for_a_token_and_shows_limit_errors(
    serve: Serve, browser: Browser
) -> None:
    served = await serve(messages_per_minute=1)
    page = await browser.new_page(viewport={"width": 1024, "height": 600})
    await page.goto(f"{served.base}/")
    await expect(page.locator("#notice")).to_have_text("Enter your access token.")
    await expect(page.locator("#token-form")).to_be_visible()
    await page.fill("#token", "wrong-token")
    await page.click("#token-form button")
    await expect(page.locator("#notice")).to_have_text("The token was refused; enter a valid one.")
    await page.fill("#token", "secret-2")
    await page.click("#token-form button")
    await expect(page.locator("#status")).to_have_text("Connected as bob")
    for text in ("one", "two"):
        await page.fill("#text", text)
        await page.press("#text", "Enter")
    await expect(page.locator("#notice")).to_contain_text("You are sending too fast")
    await expect(page.locator(".msg.bot").nth(1)).to_contain_text("You are sending too fast")
    await expect(page.locator(".msg.bot").nth(0)).to_have_text("You said: one")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "web_page_limits.png"))
