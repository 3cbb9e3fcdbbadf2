"""Private files: the data directory holds what users typed and said, so it is created 0700 and
the files in it 0600; looser ones left by earlier versions or other tools are tightened at start.

A leaf module (standard library only): the model cache, the terminal history and the database
all create their files through it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_MAX_ENTRIES = 10_000
"""``secure_tree`` looks at no more entries than this (a home pointed at a huge folder)."""


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as a private directory; tighten it if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    _warn(_tighten(path, PRIVATE_DIR))
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty as a private file unless it exists; tighten it if it does."""
    private_dir(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, PRIVATE_FILE)
    os.close(fd)
    _warn(_tighten(path, PRIVATE_FILE))
    return path


def secure_tree(root: Path) -> list[str]:
    """Make ``root`` a private directory and take group and other permissions away from
    everything in it. Returns one warning line per entry that could not be tightened."""
    private_dir(root)
    problems: list[str] = []
    seen = 0
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            seen += 1
            if seen > _MAX_ENTRIES:
                problems.append(
                    f"{root} holds over {_MAX_ENTRIES} entries; only the first were checked"
                )
                return problems
            path = Path(folder, name)
            problem = _tighten(path, PRIVATE_DIR if name in dirs else PRIVATE_FILE)
            if problem:
                problems.append(problem)
    return problems


HOME_ENTRIES = (
    "models",
    "terminal_history",
    "chatcore.db",
    "chatcore.db-wal",
    "chatcore.db-shm",
    "chatcore.db-locks",
)
"""What chatcore keeps in its data directory; nothing else there is touched."""


def secure_home(home: Path, entries: tuple[str, ...] = HOME_ENTRIES) -> list[str]:
    """Make ``home`` a private directory and tighten chatcore's own ``entries`` in it (folders
    whole), logging a warning for each one that was open to others. Returns a line per entry
    that could not be tightened. Whatever else lives in ``home`` is left alone."""
    problems: list[str] = []
    for path in (home, *(home / name for name in entries)):
        try:
            info = path.lstat()
        except OSError:
            continue
        if stat.S_IMODE(info.st_mode) & 0o077:
            mode = oct(stat.S_IMODE(info.st_mode))
            log.warning("%s was open to other users (mode %s); making it private", path, mode)
        if path == home:
            continue
        if stat.S_ISDIR(info.st_mode):
            problems += secure_tree(path)
        elif problem := _tighten(path, PRIVATE_FILE):
            problems.append(problem)
    private_dir(home)
    return problems


def _tighten(path: Path, mode: int) -> str | None:
    """Remove group and other permission bits from ``path``; a warning line when impossible."""
    try:
        info = path.lstat()
    except OSError:
        return None  # vanished meanwhile
    if stat.S_ISLNK(info.st_mode) or not stat.S_IMODE(info.st_mode) & 0o077:
        return None
    try:
        os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700 | mode)
    except OSError as error:
        return f"{path} is open to other users and cannot be made private: {error.strerror}"
    return None


def _warn(problem: str | None) -> None:
    if problem:
        log.warning("%s", problem)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, replacing what was there, readable by its owner only
    (0600, also when the file existed). The folder is left as it is."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with open(fd, "w", encoding="utf-8") as file:
        os.fchmod(fd, PRIVATE_FILE)
        file.write(text)


def lock_or_close(fd: int) -> bool:
    """Take an exclusive ``flock`` on the open file ``fd`` without waiting: True when taken
    (the caller keeps ``fd``; closing it gives the lock back, as the process's death does).
    When another holder has it, ``fd`` is closed and the answer is False; on an error it is
    closed too, and the error raised."""
    import fcntl  # POSIX only: imported here so that this module imports everywhere

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    except BaseException:
        os.close(fd)
        raise
    return True
