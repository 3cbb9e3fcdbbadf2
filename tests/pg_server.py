"""A throw-away PostgreSQL server for tests: initdb and pg_ctl into a temporary directory,
listening on 127.0.0.1 only; run as the ``postgres`` system user when the tests run as root."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SKIP_ENV = "CHATCORE_SKIP_POSTGRES"
"""Set to 1 to skip the PostgreSQL tests where the server is not installed."""
MISSING = (
    "the PostgreSQL server is not installed (no initdb under /usr/lib/postgresql/*/bin or on "
    f"PATH): `apt-get install postgresql` (.ci/run does), or set {SKIP_ENV}=1 to skip the "
    "PostgreSQL tests"
)


class PostgresUnavailableError(Exception):
    """The server binaries are missing or it could not start; the message says what to do."""


def find_bindir() -> Path | None:
    """The newest installed server's ``bin`` folder, or the one of ``initdb`` on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """A running server; ``url`` connects as the superuser ``postgres`` (trust on loopback)."""

    bindir: Path
    root: Path
    port: int
    prefix: list[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )

    def stop(self) -> None:
        try:
            self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a fresh server on a free loopback port; ``PostgresUnavailableError`` if it cannot."""
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailableError(MISSING)
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="chatcore-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailableError(
                "tests run as root and there is no `postgres` system user to run the server as "
                "(the Debian package `postgresql` creates it)"
            ) from None
        os.chown(root, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(bindir, root, _free_port(), prefix)
    steps = [
        [
            str(bindir / "initdb"),
            "-D",
            str(server.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ],
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(server.data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {server.port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off "
            "-c full_page_writes=off -c max_connections=50",
            "start",
        ],
    ]
    for step in steps:
        done = server.run(*step)
        if done.returncode != 0:
            log = root / "server.log"
            details = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailableError(
                f"{Path(step[0]).name} failed ({done.returncode}): "
                f"{done.stderr.strip()[-2000:]}\n{details}"
            )
    return server
