"""The model cache's safety: a manifest of checksums checked at every start, a lock so one
process converts at a time, the converter child process, and leftovers of interrupted runs.

No torch here: a start on an intact cache imports it only to load the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from chatcore.files import PRIVATE_FILE, lock_or_close, private_dir, secure_tree
from chatcore.generation.types import GenerationError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump to re-convert every cached model after a change to the conversion."""
MANIFEST = "chatcore-cache.json"
"""The file in a cache folder that lists the size and sha256 of every other file in it."""
POLL_SECONDS = 0.1
"""How often a waiting worker looks at its cancel flag (lock, converter child)."""
_STALE_UNLOCKED_SECONDS = 3600.0
"""A temporary folder without a lock file (an older chatcore) counts as stale after this."""
_TMP_NAME = re.compile(r"^\.tmp-(?P<cache>.+)-(?:\d+|old)-[0-9a-f]{8}$")
_ERROR_TAIL_BYTES = 16384
CONVERTER_MODULE = "chatcore.generation.convert"

ConverterCommand = Callable[[Path, Path], list[str]]
"""Builds the command line of a converter child process from (GGUF file, output folder)."""


class ConversionStopped(GenerationError):
    """The conversion was stopped (Ctrl-C, or the backend closed) before it finished."""


@dataclass(frozen=True, slots=True)
class Source:
    """The identity of the GGUF file a cache folder was converted from."""

    file: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, gguf: Path) -> Source:
        stat = gguf.stat()
        return cls(gguf.name, stat.st_size, stat.st_mtime_ns)


def lock_path(target: Path) -> Path:
    """The lock file of the cache folder ``target``: beside it, never inside."""
    return target.with_name(f"{target.name}.lock")


def tmp_folder(target: Path, tag: str) -> Path:
    """A fresh temporary sibling of ``target``; ``tag`` is a process id, or ``old``."""
    return target.with_name(f".tmp-{target.name}-{tag}-{uuid.uuid4().hex[:8]}")


def prepare_tmp(target: Path) -> Path:
    """A new private temporary folder for converting into ``target``."""
    return private_dir(tmp_folder(target, str(os.getpid())))


# -- the manifest -------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(folder: Path, source: Source) -> None:
    """List the size and sha256 of every file in ``folder`` in its manifest (written last)."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name != MANIFEST:
            files[name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    data = {"cache_format": CACHE_FORMAT, "source": asdict(source), "files": files}
    fd = os.open(folder / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def check_cache(folder: Path, source: Source) -> str | None:
    """What is wrong with the cache folder ``folder`` (``None``: it is intact).

    Reads every file once (sha256): same-size corruption of the weights is caught too.
    """
    if not folder.is_dir():
        return "it is missing" if not folder.exists() else "it is not a folder"
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"its manifest {MANIFEST} is missing (an interrupted or older conversion)"
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"its manifest {MANIFEST} cannot be read ({type(error).__name__})"
    files = _manifest_files(data)
    if files is None:
        return f"its manifest {MANIFEST} is not a valid cache manifest"
    if data.get("cache_format") != CACHE_FORMAT:
        return f"it was written in cache format {data.get('cache_format')}, not {CACHE_FORMAT}"
    if data.get("source") != asdict(source):
        return f"it was converted from another file than {source.file}"
    if "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
        return "its manifest lists no config.json or no weights"
    for name, (size, digest) in files.items():
        path = folder / name
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} is {actual} bytes, not {size} (truncated or overwritten)"
        try:
            if file_sha256(path) != digest:
                return f"{name} is corrupted (its sha256 checksum does not match)"
        except OSError as error:
            return f"{name} cannot be read ({error.strerror})"
    return None


def _manifest_files(data: object) -> dict[str, tuple[int, str]] | None:
    """The manifest's ``name: (size, sha256)`` entries, or ``None`` when it is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    files: dict[str, tuple[int, str]] = {}
    for name, entry in data["files"].items():
        if not isinstance(entry, dict) or ".." in Path(name).parts or Path(name).is_absolute():
            return None
        size, digest = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or not isinstance(digest, str):
            return None
        files[name] = (size, digest)
    return files


# -- publishing and removing --------------------------------------------------------------------


def publish(tmp: Path, target: Path, source: Source) -> None:
    """Make ``tmp`` private, write its manifest and rename it to ``target`` (which must not
    exist), durably: the folder appears complete or not at all."""
    problems = secure_tree(tmp)
    if problems:
        raise GenerationError(f"cannot make the model cache private: {problems[0]}")
    write_manifest(tmp, source)
    for path in tmp.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    tmp.rename(target)
    _fsync_dir(target.parent)


def remove_folder(target: Path) -> None:
    """Move ``target`` aside (atomically) and delete it; call with the cache's lock held."""
    aside = tmp_folder(target, "old")
    try:
        target.rename(aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # make a rename durable where the platform allows
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the lock -----------------------------------------------------------------------------------


class CacheLock:
    """An exclusive ``flock`` on a lock file: one conversion of a model at a time.

    Each instance opens its own descriptor, so two threads of one process exclude each other
    too. The lock file is never deleted (deleting a lock file races with its next user).
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._create = create
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; ``False`` when another holder has it (or, without
        ``create``, when the lock file does not exist)."""
        if self._fd is not None:
            return True
        flags = os.O_RDWR | (os.O_CREAT if self._create else 0)
        try:
            fd = os.open(self.path, flags, PRIVATE_FILE)
        except FileNotFoundError:
            if self._create:
                raise
            return False
        if not lock_or_close(fd):
            return False
        self._fd = fd
        return True

    def acquire(self, cancel: threading.Event | None, waiting: str) -> bool:
        """Take the lock, waiting for its holder; logs ``waiting`` once when it must wait.

        Returns whether it waited. Raises ``ConversionStopped`` when ``cancel`` is set first.
        """
        if self.try_acquire():
            return False
        log.info("%s", waiting)
        stop = cancel or threading.Event()
        while not self.try_acquire():
            if stop.wait(POLL_SECONDS):
                raise ConversionStopped(f"stopped while {waiting}")
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> CacheLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


# -- leftovers of interrupted conversions -------------------------------------------------------


def remove_stale_tmp(models: Path, *, holding: str | None = None) -> list[Path]:
    """Delete the temporary folders that interrupted conversions left in ``models``.

    A folder is deleted only under its cache's lock, taken without waiting: the folder of a
    conversion running in another process stays. ``holding`` names the cache folder whose lock
    the caller holds. A folder without a lock file (an older chatcore) goes after an hour.
    """
    removed: list[Path] = []
    for leftover in sorted(models.glob(".tmp-*")):
        if leftover.is_symlink() or not leftover.is_dir():
            continue
        match = _TMP_NAME.match(leftover.name)
        cache = match["cache"] if match else None
        if cache is not None and cache == holding:
            shutil.rmtree(leftover, ignore_errors=True)
        elif cache is not None and lock_path(models / cache).exists():
            with CacheLock(lock_path(models / cache), create=False) as lock:
                if not lock.try_acquire():
                    log.debug("%s belongs to a running conversion; leaving it", leftover)
                    continue
                shutil.rmtree(leftover, ignore_errors=True)
        elif _age(leftover) > _STALE_UNLOCKED_SECONDS:
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            continue
        removed.append(leftover)
    if removed:
        names = ", ".join(p.name for p in removed)
        log.info("removed temporary folders of interrupted model conversions: %s", names)
    return removed


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


# -- the converter child process ----------------------------------------------------------------


def converter_command(gguf: Path, out: Path, *, threads: int = 0) -> list[str]:
    """The command line of the child process that converts ``gguf`` into the folder ``out``."""
    return [
        sys.executable,
        "-m",
        CONVERTER_MODULE,
        "--parent-pid",
        str(os.getpid()),
        "--threads",
        str(threads),
        str(gguf),
        str(out),
    ]


def run_converter(command: Sequence[str], what: str, cancel: threading.Event | None) -> None:
    """Run the converter ``command`` (a child process) to its end.

    Looks at ``cancel`` every ``POLL_SECONDS``: when it is set, kills the child and raises
    ``ConversionStopped``. A failing child is a ``GenerationError`` with its last error line.
    """
    stop = cancel or threading.Event()
    with tempfile.TemporaryFile() as errors:
        try:
            child = subprocess.Popen(
                list(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors
            )
        except OSError as error:
            raise GenerationError(
                f"cannot start the model conversion ({command[0]}): {error.strerror}"
            ) from error
        try:
            while child.poll() is None:
                if stop.wait(POLL_SECONDS):
                    raise ConversionStopped(
                        f"converting {what} was stopped; it starts again at the next start"
                    )
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        if child.returncode != 0:
            raise GenerationError(_child_failure(what, child.returncode, errors))


def _child_failure(what: str, code: int, errors: IO[bytes]) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return (
            f"converting {what} failed: the conversion process was killed by {name} "
            "(out of memory?); the model cache was not written"
        )
    size = errors.seek(0, os.SEEK_END)
    errors.seek(max(0, size - _ERROR_TAIL_BYTES))
    lines = [line.strip() for line in errors.read().decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    reported = [line for line in lines if line.startswith("error: ")]
    last = (reported or lines or [f"it exited with code {code} and no message"])[-1]
    return f"converting {what} failed: {last.removeprefix('error: ')}"
