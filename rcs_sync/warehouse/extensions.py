"""DuckDB extensions from installed wheels, never from the network.

The lake extra (`pip install 'rcs-sync[lake]'`) installs `duckdb-extension-ducklake`,
`-postgres` and `-sqlite`: binaries built for one DuckDB release, shipped in
`duckdb_extension_<package>/extensions/<version>/<package>.duckdb_extension`. DuckDB
names an extension's entry point after its file name, and the postgres binary's internal
name is `postgres_scanner` (sqlite's `sqlite_scanner`), so it cannot be loaded from the
wheel's path as it is: each file is linked under its internal name into a private
extension directory, which the connection also uses as its `extension_directory`.
Autoinstall and autoload stay off, so nothing is ever fetched at run time.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from rcs_sync.model.errors import EXIT_INSTALL, WarehouseUnavailable


@dataclass(frozen=True)
class Extension:
    name: str
    """DuckDB's internal name, the one `LOAD` and `duckdb_extensions()` use."""
    package: str
    """The wheel's import name (`duckdb_extension_<package>`) and file stem."""


DUCKLAKE = Extension("ducklake", "ducklake")
POSTGRES = Extension("postgres_scanner", "postgres")
SQLITE = Extension("sqlite_scanner", "sqlite")
LAKE_EXTENSIONS = (DUCKLAKE, POSTGRES)
"""What a lake on a PostgreSQL catalog loads; on a SQLite catalog, `SQLITE` instead."""
NO_DOWNLOADS: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}
"""Connection settings of any connection that loads extensions this way."""


class ExtensionMissing(WarehouseUnavailable):
    """The environment lacks an extension's wheel for this DuckDB release: a problem of
    the installation, not of the warehouse, hence an exit code of its own."""

    exit_code = EXIT_INSTALL
    kind = "install"


def wheel_file(extension: Extension, version: str) -> Path:
    """The extension's binary in its installed wheel, for DuckDB `version` ("v1.5.5")."""
    module = f"duckdb_extension_{extension.package}"
    spec = importlib.util.find_spec(module)
    hint = (
        f"install the lake extra (pip install 'rcs-sync[lake]'), which pins the DuckDB "
        f"release its extension wheels are built for; this environment has DuckDB {version}"
    )
    if spec is None or spec.origin is None:
        raise ExtensionMissing(f"DuckDB extension {extension.name} is not installed: {hint}")
    wheel = Path(spec.origin).parent / "extensions" / version
    path = wheel / f"{extension.package}.duckdb_extension"
    if not path.is_file():
        raise ExtensionMissing(
            f"DuckDB extension {extension.name} has no build for DuckDB {version} "
            f"(looked for {path}): {hint}"
        )
    return path


def load(con: duckdb.DuckDBPyConnection, extensions: Sequence[Extension], directory: Path) -> None:
    """Load `extensions` into `con` from their wheels, linked into `directory`."""
    row = con.execute("PRAGMA version").fetchone()
    assert row is not None
    version = str(row[0])
    target = directory / version
    target.mkdir(parents=True, exist_ok=True, mode=0o750)
    con.execute("SET extension_directory = ?", [str(directory)])
    for extension in extensions:
        link = _link(wheel_file(extension, version), target / f"{extension.name}.duckdb_extension")
        con.execute(f"LOAD '{link}'")


def _link(source: Path, link: Path) -> Path:
    """`link` pointing at `source`, replaced atomically if it points elsewhere (another
    process may be doing the same at the same moment)."""
    if link.is_symlink() and Path(os.readlink(link)) == source:
        return link
    temporary = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
    temporary.symlink_to(source)
    os.replace(temporary, link)
    return link


def private_directory() -> Path:
    """This user's extension directory: `rcs-sync-<uid>-extensions` in the temporary
    directory, made 0700 and refused unless it is ours, so nobody else can plant a
    link in it. It holds only links to the wheels' files, remade when missing."""
    path = Path(tempfile.gettempdir()) / f"rcs-sync-{os.getuid()}-extensions"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise WarehouseUnavailable(f"cannot create the extension directory {path}: {exc}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise WarehouseUnavailable(
            f"the extension directory {path} is not a directory of this user's alone: "
            "remove it (rcs-sync recreates it)"
        )
    return path
