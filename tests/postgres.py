"""A real PostgreSQL server for the lake tests, started and stopped by the tests.

The binaries are Debian's `postgresql` package (`.ci/run` installs it): initdb and
postgres from `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin. The
cluster lives in a temporary directory, listens on 127.0.0.1 only (and a socket in the
same directory) with fsync on, so a kill -9 of a client means what it means in
production. PostgreSQL refuses to run as root: as root the cluster's directory is given
to `nobody` and the server runs as that user (`setpriv`, util-linux).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "rcs"
START_TIMEOUT = 30.0


def bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are, or None when PostgreSQL is not installed."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found and (Path(found) / "initdb").is_file():
            return Path(found)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


MISSING = (
    "PostgreSQL is not installed: the lake tests start a real server "
    "(Debian: apt-get install postgresql; .ci/run installs it)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """One throwaway cluster; `catalog(db)` is a DuckLake catalog string for a database."""

    bin: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rcs-pg-")))
    port: int = field(default_factory=_free_port)
    _databases: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _as_owner(self, *argv: str) -> list[str]:
        if os.geteuid() != 0:
            return list(argv)
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            os.chown(self.root, 65534, 65534)
        subprocess.run(
            self._as_owner(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ),
            check=True,
            capture_output=True,
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=on -c max_connections=200"
        )
        subprocess.run(
            self._as_owner(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "start",
            ),
            check=True,
            capture_output=True,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    log = (self.root / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"PostgreSQL did not start: {log}") from None
                time.sleep(0.05)

    def psql(self, sql: str, database: str = "postgres") -> str:
        psql = self.bin / "psql"
        return subprocess.run(
            [
                str(psql if psql.is_file() else "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAtc",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def create_database(self) -> str:
        """A new empty database, one per test, so tests never see each other's catalogs."""
        self._databases += 1
        name = f"lake_{self._databases}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def catalog(self, database: str) -> str:
        """The DuckLake catalog string for `database` (no password: trust on loopback)."""
        return f"postgres:dbname={database} host=127.0.0.1 port={self.port} user={SUPERUSER}"

    def stop(self) -> None:
        subprocess.run(
            self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)
