"""The ``openai`` backend against a real OpenAI-compatible server: llama.cpp's, through
llama-cpp-python (``python -m llama_cpp.server``), serving the embedded SmolLM2 GGUF.

``make test`` installs llama-cpp-python[server] (it builds from source: several minutes on two
cores the first time, then pip's cache has the wheel); without it these tests fail saying so,
unless CHATCORE_SKIP_LLAMA=1.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from chatcore.config import GenerationSettings, ModelSettings, OpenAISettings
from chatcore.events import ChatMessage
from chatcore.generation import model_files
from chatcore.generation.openai import OpenAIBackend
from chatcore.generation.types import GenerationError
from tests.conftest import RUN_ENVIRONMENT

SKIP_ENV = "CHATCORE_SKIP_LLAMA"


@pytest.fixture(scope="module", autouse=True)
def _llama_cpp_installed() -> None:
    """``make test`` installs llama-cpp-python[server]; without it these tests fail saying so,
    unless CHATCORE_SKIP_LLAMA=1 says to skip them."""
    if importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("llama_cpp.server"):
        return
    problem = (
        "llama-cpp-python[server] is not installed: `make test` installs it (it builds from "
        f"source, minutes), or set {SKIP_ENV}=1 to skip the real-server tests"
    )
    if RUN_ENVIRONMENT.get(SKIP_ENV) == "1":
        pytest.skip(problem)
    pytest.fail(problem, pytrace=False)


CONTEXT = 1024
STARTUP_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``llama_cpp.server`` on loopback with the embedded GGUF; yields its base URL."""
    gguf = model_files.locate_model(ModelSettings()).gguf_path
    assert gguf is not None
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(CONTEXT),
    ]
    # Its log goes to a file: llama.cpp writes tens of kilobytes at start, which would fill a
    # pipe nobody reads and stop the server before it listens.
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        asyncio.run(_wait_until_ready(base, process, log_path))
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _wait_until_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(STARTUP_SECONDS * 4):  # bounded: four tries a second
            if process.poll() is not None:
                error = log.read_text(errors="replace")  # noqa: ASYNC240 - once, failing
                pytest.fail(f"llama_cpp.server exited: {error[-2000:]}")
            try:
                async with session.get(f"{base}/models") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    pytest.fail(f"llama_cpp.server did not answer within {STARTUP_SECONDS} s")


@pytest.fixture
async def backend(llama_server: str) -> AsyncIterator[OpenAIBackend]:
    made = OpenAIBackend(OpenAISettings(base_url=llama_server), window=CONTEXT)
    await made.load()
    try:
        yield made
    finally:
        await made.close()


OPTIONS = GenerationSettings(max_new_tokens=24, repetition_penalty=1.0)


async def test_a_real_server_streams_a_reply(backend: OpenAIBackend) -> None:
    assert backend.model == "smollm2"  # the only model it lists
    messages = [
        ChatMessage("system", "You are a helpful AI assistant."),
        ChatMessage("user", "What is the capital of France?"),
    ]
    chunks = [chunk async for chunk in backend.stream(messages, OPTIONS)]
    text = "".join(c.text for c in chunks)
    assert len(chunks) > 2 and text.strip()
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and last.usage is not None
    assert last.usage.completion_tokens > 0
    # The estimate must not under-count what the server's own tokenizer counted.
    assert backend.tokenizer.count_tokens(messages) >= last.usage.prompt_tokens


async def test_a_real_server_that_finds_the_prompt_too_long(backend: OpenAIBackend) -> None:
    long = "word " * (CONTEXT * 2)
    with pytest.raises(GenerationError, match=r"too long|context"):
        await asyncio.wait_for(
            _drain(backend, [ChatMessage("user", long)]),
            60,
        )


async def _drain(backend: OpenAIBackend, messages: list[ChatMessage]) -> None:
    async for _ in backend.stream(messages, OPTIONS):
        pass


def test_the_embedded_gguf_is_found() -> None:
    location = model_files.locate_model(ModelSettings())
    assert location.gguf_path is not None and Path(location.gguf_path).is_file()
