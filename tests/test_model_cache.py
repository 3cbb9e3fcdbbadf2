"""Tests of the model cache: the manifest check, repair, the lock between processes, leftovers of
interrupted conversions, stopping a conversion, and file modes.

Most run a fake converter (tests/fake_converter.py) that writes a tiny folder in milliseconds;
the few marked ``model`` use the real embedded model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chatcore.config import GenerationSettings, ModelSettings
from chatcore.generation import model_cache, model_files
from chatcore.generation.local import TransformersBackend, _Loaded
from chatcore.generation.model_cache import (
    CONVERTER_MODULE,
    MANIFEST,
    CacheLock,
    ConversionStopped,
    Source,
    check_cache,
    lock_path,
)
from chatcore.generation.model_files import ModelLocation, PreparedModel, prepare_model
from chatcore.generation.types import ChatMessage, GenerationError
from tests.fake_converter import FakeConverter

FRANCE = [ChatMessage("user", "What is the capital of France?")]
GUARD_SECONDS = 30.0
"""How long a test waits for something that takes milliseconds (a guard against hanging)."""


@pytest.fixture
def location(tmp_path: Path) -> ModelLocation:
    (tmp_path / "m.gguf").write_bytes(b"GGUF, but only for the cache key")
    return ModelLocation(tmp_path, "m.gguf")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def fake(tmp_path: Path) -> FakeConverter:
    return FakeConverter(tmp_path / "converter-runs.txt")


def source_of(location: ModelLocation) -> Source:
    assert location.gguf_path is not None
    return Source.of(location.gguf_path)


def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "models").glob(".tmp-*"))


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the manifest -------------------------------------------------------------------------------


def test_manifest_lists_every_file_and_a_second_start_uses_the_cache(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    prepared = prepare_model(location, home, converter=fake)
    assert prepared.converted and not prepared.from_cache
    target = model_files.cache_dir(location, home)
    assert prepared.folder == target
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["cache_format"] == model_cache.CACHE_FORMAT
    assert manifest["source"] == {
        "file": "m.gguf",
        "size": location.folder.joinpath("m.gguf").stat().st_size,
        "mtime_ns": location.folder.joinpath("m.gguf").stat().st_mtime_ns,
    }
    assert sorted(manifest["files"]) == ["config.json", "model.safetensors", "tokenizer.json"]
    weights = manifest["files"]["model.safetensors"]
    assert weights["size"] == (target / "model.safetensors").stat().st_size
    assert weights["sha256"] == model_cache.file_sha256(target / "model.safetensors")
    assert check_cache(target, source_of(location)) is None

    again = prepare_model(location, home, converter=fake)
    assert again.from_cache and not again.converted and again.folder == target
    assert fake.runs == 1
    assert leftovers(home) == []


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _corrupt_same_size(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "truncated weights": (_truncate, r"model\.safetensors is 100 bytes, not \d+ \(truncated"),
    "same-size corrupted weights": (_corrupt_same_size, r"model\.safetensors is corrupted"),
    "deleted tokenizer.json": (
        lambda folder: (folder / "tokenizer.json").unlink(),
        r"tokenizer\.json is missing",
    ),
    "garbage config.json": (
        lambda folder: (folder / "config.json").write_text("garbage"),
        r"config\.json is \d+ bytes",
    ),
    "garbage same-size config.json": (
        lambda folder: (folder / "config.json").write_text(
            "x" * (folder / "config.json").stat().st_size
        ),
        r"config\.json is corrupted",
    ),
    "missing manifest": (
        lambda folder: (folder / MANIFEST).unlink(),
        r"manifest chatcore-cache\.json is missing",
    ),
    "garbage manifest": (
        lambda folder: (folder / MANIFEST).write_text("{not json"),
        r"manifest chatcore-cache\.json cannot be read",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_detected_and_rebuilt_once(
    damage: str,
    location: ModelLocation,
    home: Path,
    fake: FakeConverter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    damage_folder, problem = DAMAGE[damage]
    target = prepare_model(location, home, converter=fake).folder
    damage_folder(target)
    found = check_cache(target, source_of(location))
    assert found is not None and re.search(problem, found), found

    with caplog.at_level(logging.INFO, logger="chatcore.generation"):
        prepared = prepare_model(location, home, converter=fake)
    assert prepared.converted and prepared.folder == target
    assert fake.runs == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(target) in warnings[0] and found in warnings[0]
    assert check_cache(target, source_of(location)) is None
    assert prepare_model(location, home, converter=fake).from_cache
    assert fake.runs == 2
    assert leftovers(home) == []


def test_a_cache_of_another_source_file_is_rebuilt(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    target = prepare_model(location, home, converter=fake).folder
    other = Source("m.gguf", 1, 2)
    assert check_cache(target, other) == "it was converted from another file than m.gguf"


# -- failures -----------------------------------------------------------------------------------


def test_a_failing_converter_reports_its_last_error_line(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    fake.mode = "fail"
    with pytest.raises(GenerationError) as caught:
        prepare_model(location, home, converter=fake)
    assert str(caught.value) == (
        f"converting {location} failed: cannot convert the model: No space left on device"
    )
    assert not model_files.cache_dir(location, home).exists()
    assert leftovers(home) == []


def test_a_killed_converter_says_so(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    fake.mode = "killed"
    with pytest.raises(GenerationError, match=r"killed by SIGKILL \(out of memory\?\)"):
        prepare_model(location, home, converter=fake)
    assert leftovers(home) == []


def test_the_real_converter_reports_a_broken_gguf_file(location: ModelLocation, home: Path) -> None:
    with pytest.raises(GenerationError) as caught:
        prepare_model(location, home)  # the real converter process, on a file that is no GGUF
    assert str(caught.value).startswith(
        f"converting {location} failed: cannot read the GGUF model {location}: "
    )
    assert "\n" not in str(caught.value)
    assert not model_files.cache_dir(location, home).exists()
    assert leftovers(home) == []


class _FolderBackend(TransformersBackend):
    """The transformers backend with a fake loader that, like the library, reads config.json
    and fails on garbage; no torch."""

    def _load_folder(self, prepared: PreparedModel, cancel: threading.Event) -> _Loaded:
        json.loads((prepared.folder / "config.json").read_text())
        return _Loaded(None, None, prepared, frozenset())  # type: ignore[arg-type]


def _backend(location: ModelLocation, home: Path, converter: FakeConverter) -> _FolderBackend:
    assert location.gguf_path is not None
    return _FolderBackend(ModelSettings(path=str(location.gguf_path)), home, converter=converter)


async def test_a_cache_the_library_cannot_load_is_rebuilt_once(
    location: ModelLocation, home: Path, fake: FakeConverter, caplog: pytest.LogCaptureFixture
) -> None:
    fake.mode = "garbage"  # a consistent manifest of a folder that does not load
    target = prepare_model(location, home, converter=fake).folder
    fake.mode = "ok"
    backend = _backend(location, home, fake)
    try:
        with caplog.at_level(logging.WARNING):
            await backend.load()
        assert backend.prepared.converted and backend.prepared.folder == target
    finally:
        await backend.close()
    assert fake.runs == 2
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"cannot load the model cache {target} (JSONDecodeError" in warning


@pytest.mark.parametrize("start", ["empty", "unloadable", "damaged"])
async def test_a_second_failure_is_a_clear_error_and_no_loop(
    start: str, location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    fake.mode = "garbage"  # every conversion writes a folder the library cannot load
    target = model_files.cache_dir(location, home)
    if start != "empty":
        prepare_model(location, home, converter=fake)
    if start == "damaged":
        _corrupt_same_size(target)
    runs_before = fake.runs
    backend = _backend(location, home, fake)
    try:
        with pytest.raises(GenerationError) as caught:
            await backend.load()
    finally:
        await backend.close()
    assert fake.runs == runs_before + 1  # one conversion (a rebuild), never a second one
    message = str(caught.value)
    assert f"cannot load the freshly converted model in {target}: JSONDecodeError" in message
    assert f"Delete the folder {target} and start again" in message
    assert "check the free disk space" in message


# -- the lock -----------------------------------------------------------------------------------


def test_two_threads_on_an_empty_cache_convert_once(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    fake.delay = 0.5
    results: list[PreparedModel] = []
    errors: list[BaseException] = []
    both = threading.Barrier(2)

    def start() -> None:
        both.wait()
        try:
            results.append(prepare_model(location, home, converter=fake))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD_SECONDS)
    assert not errors
    assert fake.runs == 1
    assert sorted(p.converted for p in results) == [False, True]
    assert all(p.folder == results[0].folder for p in results)


def test_two_processes_on_an_empty_cache_convert_once(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    fake.delay = 1.0
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from chatcore.generation.model_files import ModelLocation, prepare_model\n"
        "from tests.fake_converter import FakeConverter\n"
        f"fake = FakeConverter(Path({str(fake.record)!r}), delay={fake.delay})\n"
        f"location = ModelLocation(Path({str(location.folder)!r}), 'm.gguf')\n"
        f"prepared = prepare_model(location, Path({str(home)!r}), converter=fake)\n"
        "print('converted' if prepared.converted else 'cached')\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    chats = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, cwd=root
        )
        for _ in range(2)
    ]
    outputs = sorted(chat.communicate(timeout=120)[0].strip() for chat in chats)
    assert [chat.returncode for chat in chats] == [0, 0]
    assert outputs == ["cached", "converted"]
    assert fake.runs == 1


def test_a_waiting_start_uses_the_other_processes_result(
    location: ModelLocation, home: Path, fake: FakeConverter, caplog: pytest.LogCaptureFixture
) -> None:
    target = model_files.cache_dir(location, home)
    results: list[PreparedModel] = []
    waiter = threading.Thread(target=lambda: results.append(prepare_model(location, home)))
    with caplog.at_level(logging.INFO), CacheLock(lock_path(target)) as other:
        target.parent.mkdir(parents=True)
        assert other.try_acquire()
        waiter.start()
        wait_until(lambda: "waiting for another chatcore process" in caplog.text, "it waits")
        model_files.convert_gguf(location, target, converter=fake)  # as the other process
    waiter.join(GUARD_SECONDS)
    assert [p.from_cache for p in results] == [True]
    assert fake.runs == 1
    assert f"to finish converting the model into {target}" in caplog.text


def _preparing(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> tuple[threading.Event, threading.Thread, list[BaseException]]:
    """A thread (not started) that prepares the model with a cancel flag; what it raises
    lands in the list."""
    cancel = threading.Event()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            prepare_model(location, home, cancel=cancel, converter=fake)
        except BaseException as error:
            errors.append(error)

    return cancel, threading.Thread(target=start), errors


def test_cancel_while_waiting_for_the_lock(
    location: ModelLocation, home: Path, fake: FakeConverter, caplog: pytest.LogCaptureFixture
) -> None:
    target = model_files.cache_dir(location, home)
    cancel, waiter, errors = _preparing(location, home, fake)
    with caplog.at_level(logging.INFO), CacheLock(lock_path(target)) as other:
        target.parent.mkdir(parents=True)
        assert other.try_acquire()
        waiter.start()
        wait_until(lambda: "waiting for another chatcore process" in caplog.text, "it waits")
        cancel.set()
        waiter.join(5.0)
        assert not waiter.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ConversionStopped)
    assert fake.runs == 0


# -- leftovers of interrupted conversions -------------------------------------------------------


def test_stale_temporary_folders_are_removed_at_start(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    target = prepare_model(location, home, converter=fake).folder
    models = target.parent
    with CacheLock(lock_path(models / "other-0123")) as other:
        assert other.try_acquire()  # creates the other model's lock file, free again after
    names = {
        "own conversion": f".tmp-{target.name}-4242-0123abcd",
        "own removal": f".tmp-{target.name}-old-89abcdef",
        "other model's": ".tmp-other-0123-77-fedcba98",
        "old, no lock file": ".tmp-older-chatcore-5-00000000",
        "new, no lock file": ".tmp-unknown-5-00000000",
    }
    for name in names.values():
        (models / name).mkdir()
        (models / name / "model.safetensors").write_bytes(b"\0" * 4096)
    an_hour_ago = time.time() - 3700
    os.utime(models / names["old, no lock file"], (an_hour_ago, an_hour_ago))

    assert prepare_model(location, home, converter=fake).from_cache
    assert leftovers(home) == [names["new, no lock file"]]


def test_stale_folders_stay_while_another_process_holds_the_lock(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    target = prepare_model(location, home, converter=fake).folder
    leftover = target.parent / f".tmp-{target.name}-4242-0123abcd"
    leftover.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(lock_path(target)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert prepare_model(location, home, converter=fake).from_cache
        assert leftover.is_dir()
    finally:
        holder.communicate("", timeout=GUARD_SECONDS)
    assert prepare_model(location, home, converter=fake).from_cache
    assert not leftover.exists()
    assert fake.runs == 1


# -- stopping a conversion ----------------------------------------------------------------------


def _conversion_started(home: Path) -> bool:
    return any((tmp / "model.safetensors").exists() for tmp in (home / "models").glob(".tmp-*"))


def test_cancel_during_conversion_kills_the_converter_and_cleans_up(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    fake.mode = "hang"
    cancel, worker, errors = _preparing(location, home, fake)
    worker.start()
    wait_until(lambda: _conversion_started(home), "the conversion started")
    cancel.set()
    worker.join(5.0)  # it stops within a poll interval; 5 s only guards against hanging
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ConversionStopped)
    assert f"converting {location} was stopped" in str(errors[0])
    assert leftovers(home) == []
    assert not model_files.cache_dir(location, home).exists()
    [pid] = fake.pids
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


async def test_closing_the_backend_stops_a_first_start_conversion(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    fake.mode = "hang"
    backend = _backend(location, home, fake)
    load = asyncio.ensure_future(backend.load())
    await asyncio.to_thread(wait_until, lambda: _conversion_started(home), "it started")
    await asyncio.wait_for(backend.close(), 5.0)  # within a poll interval; 5 s guards a hang
    with pytest.raises(GenerationError, match="was stopped"):
        await load
    assert leftovers(home) == []


def test_the_converter_exits_when_its_parent_is_gone(tmp_path: Path) -> None:
    # A --parent-pid that is not its parent's: as if the parent had died before it started.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            CONVERTER_MODULE,
            "--parent-pid",
            str(os.getppid()),
            str(tmp_path / "m.gguf"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert not (tmp_path / "out").exists()


# -- file modes ---------------------------------------------------------------------------------


def test_cache_folders_and_files_are_private(
    location: ModelLocation, home: Path, fake: FakeConverter
) -> None:
    (home / "models").mkdir(parents=True, mode=0o755)
    os.chmod(home / "models", 0o755)
    old_umask = os.umask(0o022)  # the converter writes 0644 files: they must not stay so
    try:
        target = prepare_model(location, home, converter=fake).folder
    finally:
        os.umask(old_umask)
    assert mode_of(home / "models") == 0o700
    assert mode_of(target) == 0o700
    assert {p.name: mode_of(p) for p in target.iterdir()} == {
        "config.json": 0o600,
        "model.safetensors": 0o600,
        "tokenizer.json": 0o600,
        MANIFEST: 0o600,
    }
    assert mode_of(lock_path(target)) == 0o600


# -- the embedded model -------------------------------------------------------------------------


@pytest.mark.model
async def test_corrupted_weights_of_the_real_model_are_rebuilt(
    embedded_backend: TransformersBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = embedded_backend.prepared.folder
    assert mode_of(cache) == 0o700  # a real conversion (the child's umask) is private too
    assert {mode_of(p) for p in cache.iterdir()} == {0o600}
    home = tmp_path / "home"
    copied = home / "models" / cache.name
    shutil.copytree(cache, copied)
    _corrupt_same_size(copied)
    backend = TransformersBackend(ModelSettings(), home)
    try:
        with caplog.at_level(logging.WARNING):
            await backend.load()
        prepared = backend.prepared
        assert prepared.converted and prepared.folder == copied
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert str(copied) in warning and "model.safetensors is corrupted" in warning
        chunks = [c async for c in backend.stream(FRANCE, GenerationSettings(max_new_tokens=16))]
        assert "Paris" in "".join(c.text for c in chunks)
    finally:
        await backend.close()
    assert prepared.location.gguf_path is not None
    assert check_cache(copied, Source.of(prepared.location.gguf_path)) is None


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args.replace("\0", " "))
    return found


@pytest.mark.model
def test_ctrl_c_during_the_first_conversion_exits_promptly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    chat = subprocess.Popen(
        [sys.executable, "-m", "chatcore.cli", "chat"],
        stdin=subprocess.PIPE,  # kept open: the chat waits for input after loading
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CHATCORE_HOME": str(home)},
    )
    try:
        deadline = time.monotonic() + 120
        while not leftovers(home) and chat.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert chat.poll() is None and leftovers(home), "the conversion never started"
        time.sleep(1.0)  # let the converter get going (it is importing torch)
        chat.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = chat.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.communicate()
    assert took < 5.0, f"Ctrl-C took {took:.1f} s; stderr: {err}"
    assert chat.returncode == 130, err
    assert leftovers(home) == []
    if Path("/proc/self/cmdline").exists():
        assert _processes_mentioning(str(home)) == []  # the converter is gone too
