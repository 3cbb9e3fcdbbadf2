"""The ``transformers`` backend: runs a local model (the embedded SmolLM2 by default) on CPU.

All torch work runs in one worker thread per backend; text streams to the event loop token by
token through an asyncio queue, and closing the stream stops the generation within one token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from chatcore.config import GenerationSettings, ModelSettings, Settings
from chatcore.events import FinishReason, Usage
from chatcore.generation import model_cache, model_files
from chatcore.generation.stops import StopStringFilter
from chatcore.generation.types import ChatMessage, Chunk, GenerationError, Unsupported

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

T = TypeVar("T")
TextCallback = Callable[[str], None]
DEFAULT_CONTEXT_WINDOW = 2048


class LocalTokenizer:
    """The ``ChatTokenizer`` of a local model: counts exactly the ids that ``generate`` gets.

    Thread-safe: the event loop counts tokens while the worker decodes, and a fast tokenizer
    raises "Already borrowed" when one thread changes its settings while another uses it.
    """

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase, context_window: int) -> None:
        self.hf = hf_tokenizer
        self._context_window = context_window
        self._lock = threading.Lock()

    @property
    def context_window(self) -> int:
        return self._context_window

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The prompt ids: ``messages`` in the model's chat template, assistant turn opened."""
        chat = [{"role": m.role, "content": m.content} for m in messages]
        with self._lock:
            ids = self.hf.apply_chat_template(
                chat, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise GenerationError(
                f"the chat template of the model produced {type(ids).__name__}, not token ids"
            )
        return cast(list[int], ids)

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.encode_chat(messages))

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` without special tokens."""
        with self._lock:
            return str(self.hf.decode(list(ids), skip_special_tokens=True))


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """What one ``generate`` call produced (prompt excluded)."""

    token_ids: list[int]
    finish_reason: FinishReason
    text: str | None = None
    """The whole text, set only when it was not streamed (beam search)."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    model: Any  # a transformers model with ``generate`` (its stubs type it as a Tensor)
    tokenizer: LocalTokenizer
    prepared: model_files.PreparedModel
    eos_ids: frozenset[int]


@dataclass(frozen=True, slots=True)
class _Text:
    text: str


@dataclass(frozen=True, slots=True)
class _Prompt:
    tokens: int


@dataclass(frozen=True, slots=True)
class _Done:
    result: GenerateResult


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


_Event = _Text | _Prompt | _Done | _Failed


class TransformersBackend:
    """A ``Backend`` on a local transformers model; the GGUF default is converted once."""

    name = "transformers"

    def __init__(
        self,
        model: ModelSettings,
        home: Path,
        *,
        converter: model_cache.ConverterCommand | None = None,
    ) -> None:
        """``converter`` replaces the command line of the GGUF converter process (tests)."""
        self.model_settings = model
        self.home = home
        self.converter = converter or functools.partial(
            model_cache.converter_command, threads=model.threads
        )
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._load_future: concurrent.futures.Future[_Loaded] | None = None
        self._load_cancel: threading.Event | None = None
        self._loaded: _Loaded | None = None
        self._active: dict[threading.Event, Callable[[_Event], None]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> TransformersBackend:
        return cls(settings.model, settings.home_path)

    # -- lifecycle -------------------------------------------------------------------------

    async def load(self) -> None:
        """Locate, convert if needed (first start only) and load the model; idempotent."""
        with self._lock:
            if self._loaded is not None:
                return
            if self._load_future is None:
                self._load_cancel = threading.Event()
                self._load_future = self._worker().submit(self._load_sync, self._load_cancel)
            future = self._load_future
        try:
            loaded = await _wait(future)
        except BaseException:
            with self._lock:
                if self._load_future is future and future.done():
                    self._load_future = None  # a failed load may be retried
            raise
        with self._lock:
            if self._load_future is not future:
                raise GenerationError("the transformers backend was closed while loading")
            self._loaded = loaded

    @property
    def prepared(self) -> model_files.PreparedModel:
        """Where the model was loaded from, and whether this start converted it."""
        return self._require_loaded().prepared

    @property
    def tokenizer(self) -> LocalTokenizer:
        return self._require_loaded().tokenizer

    def unsupported(self, options: GenerationSettings) -> list[Unsupported]:
        """None: ``generate`` honours every generation setting."""
        return []

    async def close(self) -> None:
        """Stop running generations and a model conversion in progress, wait for the worker to
        finish and drop the model."""
        with self._lock:
            executor, self._executor = self._executor, None
            self._load_future = None
            load_cancel, self._load_cancel = self._load_cancel, None
            active = list(self._active.items())
        if load_cancel is not None:
            load_cancel.set()  # a conversion's child process is killed within a poll interval
        for cancel, emit in active:
            cancel.set()  # a running generation stops within one token
            emit(_Failed(GenerationError("the transformers backend was closed")))
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        self._loaded = None

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="chatcore-transformers"
            )
        return self._executor

    def _require_loaded(self) -> _Loaded:
        if self._loaded is None:
            raise GenerationError("the transformers backend is not loaded; await load() first")
        return self._loaded

    def _load_sync(self, cancel: threading.Event) -> _Loaded:
        """Prepare (check, convert) and load the model; a cache folder that the library cannot
        load is converted again, once."""
        location = model_files.locate_model(self.model_settings)
        prepared = self._prepare(location, cancel, rebuild=False)
        try:
            return self._load_folder(prepared, cancel)
        except GenerationError:
            raise
        except Exception as error:
            if location.gguf_file is None:
                raise GenerationError(
                    f"cannot load the model from {prepared.folder}: {_describe(error)}"
                ) from error
            if prepared.converted:
                raise _unloadable_cache(prepared.folder, error) from error
            log.warning(
                "cannot load the model cache %s (%s); converting the model again (once)",
                prepared.folder,
                _describe(error),
            )
        prepared = self._prepare(location, cancel, rebuild=True)
        try:
            return self._load_folder(prepared, cancel)
        except GenerationError:
            raise
        except Exception as error:
            raise _unloadable_cache(prepared.folder, error) from error

    def _prepare(
        self, location: model_files.ModelLocation, cancel: threading.Event, *, rebuild: bool
    ) -> model_files.PreparedModel:
        try:
            return model_files.prepare_model(
                location, self.home, rebuild=rebuild, cancel=cancel, converter=self.converter
            )
        except GenerationError:
            raise
        except OSError as error:
            raise GenerationError(
                f"cannot write the converted model under {self.home / 'models'}: {error}; "
                "check the free disk space and the permissions of the home directory"
            ) from error
        except Exception as error:
            raise GenerationError(f"cannot prepare the model {location}: {error}") from error

    def _load_folder(self, prepared: model_files.PreparedModel, cancel: threading.Event) -> _Loaded:
        """Load the tokenizer and the model from ``prepared.folder``; the library's errors
        propagate as they are."""
        if cancel.is_set():
            raise GenerationError("the transformers backend was closed while loading")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.model_settings.threads > 0:
            torch.set_num_threads(self.model_settings.threads)
        dtype = torch.bfloat16 if self.model_settings.dtype == "bfloat16" else torch.float32
        started = time.perf_counter()
        with model_files.quiet_progress():
            hf_tokenizer = AutoTokenizer.from_pretrained(prepared.folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                prepared.folder, dtype=dtype, local_files_only=True
            )
        log.info("loaded %s (%s) in %.1f s", prepared.folder, dtype, time.perf_counter() - started)
        window = getattr(model.config, "max_position_embeddings", None) or DEFAULT_CONTEXT_WINDOW
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = hf_tokenizer.eos_token_id
        eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        return _Loaded(model, LocalTokenizer(hf_tokenizer, int(window)), prepared, eos_ids)

    # -- generation ------------------------------------------------------------------------

    async def stream(
        self, messages: Sequence[ChatMessage], options: GenerationSettings
    ) -> AsyncGenerator[Chunk, None]:
        """Stream the reply to ``messages``; ``aclose`` (or cancelling the consumer) stops it."""
        loaded = self._require_loaded()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Event] = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: _Event) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the event loop is gone: nobody is listening
                cancel.set()

        def job() -> None:
            if cancel.is_set():
                return
            try:
                ids = loaded.tokenizer.encode_chat(messages)
                emit(_Prompt(len(ids)))
                result = self._run_generate(
                    loaded, ids, options, cancel, lambda text: emit(_Text(text))
                )
                emit(_Done(result))
            except BaseException as error:
                emit(_Failed(error))

        with self._lock:
            if self._executor is None:
                raise GenerationError("the transformers backend was closed")
            self._active[cancel] = emit
            self._executor.submit(job)
        stops = StopStringFilter(options.stop)
        prompt_tokens = 0
        result: GenerateResult | None = None
        try:
            while result is None:
                event = await queue.get()
                if isinstance(event, _Prompt):
                    prompt_tokens = event.tokens
                elif isinstance(event, _Text):
                    text = stops.feed(event.text)
                    if text:
                        yield Chunk(text)
                elif isinstance(event, _Failed):
                    raise _as_generation_error(event.error)
                else:
                    result = event.result
        finally:
            cancel.set()  # never waits: the worker notices within one token
            with self._lock:
                self._active.pop(cancel, None)
        if result.finish_reason == "cancelled":
            raise GenerationError("the transformers backend was closed during generation")
        text = stops.feed(result.text) if result.text else ""
        text += stops.flush()
        if text:
            yield Chunk(text)
        usage = Usage(prompt_tokens, len(result.token_ids))
        yield Chunk("", finish_reason=result.finish_reason, usage=usage)

    def _run_generate(
        self,
        loaded: _Loaded,
        prompt_ids: Sequence[int],
        options: GenerationSettings,
        cancel: threading.Event,
        on_text: TextCallback | None,
    ) -> GenerateResult:
        """Run one ``generate`` call (worker thread only); the seam for KV-cache reuse."""
        import torch

        window = loaded.tokenizer.context_window
        if len(prompt_ids) >= window:
            raise GenerationError(
                f"the prompt is {len(prompt_ids)} tokens but the model's context window is "
                f"{window}; shorten the conversation (context.window, context.history_limit)"
            )
        max_new = min(options.max_new_tokens, window - len(prompt_ids))
        input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        stop_check = _StopStrings(loaded.tokenizer, options.stop, len(prompt_ids))
        beam = options.strategy == "beam"
        streamer = None if beam or on_text is None else _TokenStreamer(loaded.tokenizer, on_text)
        kwargs = _decoding_kwargs(options)
        from transformers import StoppingCriteriaList

        criteria = StoppingCriteriaList([_Cancelled(cancel)])
        if options.stop:
            criteria.append(stop_check)
        output = loaded.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new,
            stopping_criteria=criteria,
            streamer=streamer,
            **kwargs,
        )
        generated = [int(t) for t in output[0, len(prompt_ids) :].tolist()]
        ended = next((i for i, t in enumerate(generated) if t in loaded.eos_ids), None)
        if ended is not None:
            generated = generated[: ended + 1]
        finish: FinishReason
        if cancel.is_set():
            finish = "cancelled"
        elif ended is not None or stop_check.hit or len(generated) < max_new:
            finish = "stop"
        else:
            finish = "length"
        text = loaded.tokenizer.decode(generated) if beam else None
        return GenerateResult(generated, finish, text)


def _decoding_kwargs(options: GenerationSettings) -> dict[str, Any]:
    """``generate`` keys for the strategy; only those it uses, so none of them warns."""
    kwargs: dict[str, Any] = {"repetition_penalty": options.repetition_penalty}
    if options.strategy == "sample":
        import torch

        if options.seed >= 0:
            torch.manual_seed(options.seed)
        else:
            torch.seed()
        kwargs.update(
            do_sample=True,
            num_beams=1,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
        )
    elif options.strategy == "beam":
        kwargs.update(do_sample=False, num_beams=options.num_beams, early_stopping=True)
    else:
        kwargs.update(do_sample=False, num_beams=1)
    return kwargs


class _TokenStreamer:
    """A ``generate`` streamer that hands over new text after every token.

    (transformers' ``TextStreamer`` waits for a space.) Text is decoded from the tokens of the
    current line, so multi-token characters and leading spaces come out right; a token that
    ends inside a multi-byte character is held until the character is complete.
    """

    def __init__(self, tokenizer: LocalTokenizer, on_text: TextCallback) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.prompt_pending = True
        self.line: list[int] = []
        self.shown = 0

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_pending:  # generate first passes the prompt
            self.prompt_pending = False
            return
        self.line.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.line)
        if text.endswith("\ufffd"):
            return
        new, self.shown = text[self.shown :], len(text)
        if text.endswith("\n"):  # start a new line: keeps decoding cost flat
            self.line, self.shown = [], 0
        if new:
            self.on_text(new)

    def end(self) -> None:
        rest = self.tokenizer.decode(self.line)[self.shown :] if self.line else ""
        self.line, self.shown = [], 0
        if rest:
            self.on_text(rest)


class _Cancelled:
    """Stops ``generate`` when the consumer went away (the event is set)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class _StopStrings:
    """Stops ``generate`` once the reply's tail holds a stop string."""

    def __init__(self, tokenizer: LocalTokenizer, stops: Sequence[str], prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.prompt_len = prompt_len
        # A token decodes to at least one character, so this many tokens cover any stop string.
        self.window = max((len(s) for s in self.stops), default=0) + 4
        self.hit = False

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        rows = []
        for row in input_ids[:, start:].tolist():
            tail = self.tokenizer.decode(row)
            rows.append(any(s in tail for s in self.stops))
        self.hit = self.hit or any(rows)
        return torch.tensor(rows, dtype=torch.bool, device=input_ids.device)


async def _wait(future: concurrent.futures.Future[T]) -> T:
    """Await a worker future without cancelling it when this waiter is cancelled."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone
            loop.call_soon_threadsafe(_settle, waiter)

    future.add_done_callback(wake)
    await waiter
    return future.result()


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _unloadable_cache(folder: Path, error: BaseException) -> GenerationError:
    return GenerationError(
        f"cannot load the freshly converted model in {folder}: {_describe(error)}. "
        f"Delete the folder {folder} and start again to convert the model anew; if that fails "
        "too, check the free disk space and memory, and report the error"
    )


def _as_generation_error(error: BaseException) -> GenerationError:
    if isinstance(error, GenerationError):
        return error
    return GenerationError(f"the local model failed to generate: {type(error).__name__}: {error}")
