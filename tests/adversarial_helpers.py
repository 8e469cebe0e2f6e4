"""Helpers shared by `tests/test_adversarial.py` (fast) and `bench/soak.py` (long).

Nothing here needs pytest, so the soak runs as a plain script. Waits are on conditions
with deadlines (`wait_until`); the only deliberate delay is the seeded pause that picks
*when* a SIGKILL strikes, which is the variable under test.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb

from rcs_sim.server import RequestLog, SimConfig, start_simulator
from rcs_sync.model.durations import format_instant
from rcs_sync.model.windows import BOUNDARY_PAD
from tests.conftest import TOKEN, Site

# --- waiting ---------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.005
) -> None:
    """Poll `condition` until true; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def pause(seconds: float) -> None:
    """A deliberate, seeded delay: it chooses the moment of a kill, nothing waits on it."""
    if seconds > 0:
        threading.Event().wait(seconds)


# --- sites outside pytest ----------------------------------------------------------------


def make_site(directory: Path, sync: dict[str, Any] | None = None, **sim_config: Any) -> Site:
    """What the `site` fixture builds, for the soak: a frozen simulator with the test
    token and a config for it. The caller stops it with `site.sim.stop()`."""
    settings: dict[str, Any] = {
        "frozen": True,
        "records": 5_000,
        "days": 10.0,
        "token": TOKEN,
        **sim_config,
    }
    directory.mkdir(parents=True, exist_ok=True)
    site = Site(directory, start_simulator(SimConfig(**settings)))
    site.write_config(sync=sync or {})
    return site


# --- the warehouse against the simulator's truth ---------------------------------------


@dataclass(frozen=True)
class Comparison:
    checked: int  # valid records the simulator holds now
    missing: int  # valid records absent from the table
    stale: int  # present, in another state than the simulator's
    duplicated: int  # rows beyond one per id
    unexpected: int  # ids the simulator never served as valid records

    @property
    def lost(self) -> int:
        """A missing record and a missed state change are both data lost."""
        return self.missing + self.stale

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)

    def __str__(self) -> str:
        return (
            f"{self.checked} checked: {self.missing} missing, {self.stale} stale, "
            f"{self.duplicated} duplicated, {self.unexpected} unexpected"
        )


def compare(site: Site, clock_us: int | None = None) -> Comparison:
    """The table against the simulator's truth now, or as of `clock_us` (a running
    clock moves on after a pass: its last request is what a perfect sync holds)."""
    sim = site.sim.sim
    truth, _ = sim.truth_at(sim.now_us() if clock_us is None else clock_us)
    rows = site.query("SELECT id, state FROM rcs_records")
    table = dict(rows)
    return Comparison(
        checked=len(truth),
        missing=len(truth.keys() - table.keys()),
        stale=sum(1 for i, s in truth.items() if i in table and table[i] != s),
        duplicated=len(rows) - len(table),
        unexpected=len(table.keys() - truth.keys()),
    )


def opens_cleanly(target: Site | Path, *, migrated: bool = True) -> None:
    """The warehouse (of a site, whatever its kind) or a DuckDB file (a snapshot) opens
    read-only, as an analyst's would, and every table reads. With `migrated=False` one
    without tables passes too (a process killed while creating the warehouse leaves
    one; the next run migrates it)."""
    opened = (
        duckdb.connect(str(target), read_only=True)
        if isinstance(target, Path)
        else target.connect(read_only=True)
    )
    with opened as con:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
            ).fetchall()
        ]
        assert "rcs_records" in tables or not migrated, f"tables of {target}: {tables}"
        for table in tables:
            con.execute(f'SELECT count(*) FROM "{table}"').fetchone()


def scalar(site: Site, sql: str) -> Any:
    [(value,)] = site.query(sql)
    return value


def _migrated(site: Site) -> bool:
    if not site.exists():
        return False
    tables = site.query("SELECT table_name FROM duckdb_tables() WHERE table_name = 'sync_windows'")
    return bool(tables)


def windows_done(site: Site) -> int:
    return int(scalar(site, "SELECT count(*) FROM sync_windows")) if site.exists() else 0


def spool_leftovers(site: Site) -> int:
    """Response bodies left in the spool directory (beside the DB by default)."""
    spool = site.spool
    return sum(1 for _ in spool.iterdir()) if spool.exists() else 0


# --- SIGKILL (and SIGTERM) trials ------------------------------------------------------


@dataclass
class KillTrial:
    """One seeded signal at a pass: where it struck and what the rerun had to redo."""

    seed: int
    kind: str  # "backfill", "incremental" or "catchup"
    after_requests: int
    delay: float
    signal: signal.Signals = signal.SIGKILL
    command: tuple[str, ...] = ("sync",)
    killed: bool = False  # False when the pass ended before the signal landed
    exit_code: int | None = None  # of the signalled pass
    windows_before: int = 0  # completed window reads after the signal
    windows_after: int = 0  # completed window reads after the rerun
    rerun_requests: int = 0
    rereads: int = 0  # rerun requests inside a window the signalled pass committed
    rerun_exit: int | None = None
    rerun_stderr: str = ""
    comparison: Comparison | None = None

    @property
    def resumed(self) -> bool:
        """The rerun read no window again that the signalled pass had committed (an
        incremental pass: one request at most). Counted on the server's log, not on
        `sync_windows` rows, which the ledger folds together (`warehouse/ledger.py`):
        a catch-up's re-reads of old windows replace their rows."""
        if self.kind == "incremental":
            return self.rerun_requests <= 1
        return self.rereads == 0

    def __str__(self) -> str:
        return (
            f"seed={self.seed} {self.kind} ({' '.join(self.command)}): {self.signal.name}"
            f" after {self.after_requests} requests + {self.delay * 1000:.0f} ms (landed:"
            f" {self.killed}, exit {self.exit_code}); windows {self.windows_before} ->"
            f" {self.windows_after}; rerun exit {self.rerun_exit}, {self.rerun_requests}"
            f" requests, {self.rereads} inside committed windows; {self.comparison}"
        )


@contextlib.contextmanager
def _running(
    site: Site, args: tuple[str, ...], stderr: int = subprocess.DEVNULL
) -> Iterator[subprocess.Popen[str]]:
    """`rcs-sync ARGS` running (its stdout dropped), killed on the way out if still alive."""
    proc = subprocess.Popen(
        site.command(*args), env=site.env(), stdout=subprocess.DEVNULL, stderr=stderr, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _signal_when(
    proc: subprocess.Popen[str],
    ready: Callable[[], bool],
    what: str,
    sig: signal.Signals,
    timeout: float,
    delay: float = 0,
) -> int:
    """Once `ready()` (or the process has ended), wait `delay` s and send `sig`; the exit
    code (negative: the signal's number, when it killed the process)."""
    wait_until(lambda: ready() or proc.poll() is not None, timeout, what)
    pause(delay)
    proc.send_signal(sig)
    return proc.wait(timeout=timeout)


def signal_pass(
    site: Site,
    args: tuple[str, ...],
    after_requests: int,
    delay: float,
    sig: signal.Signals = signal.SIGKILL,
    timeout: float = 60,
) -> int:
    """Start `rcs-sync ARGS`; once the simulator has logged `after_requests` more
    requests, wait `delay` s and send `sig`. Returns the pass's exit code."""
    base = len(site.sim.sim.requests)
    with _running(site, args) as proc:
        return _signal_when(
            proc,
            lambda: len(site.sim.sim.requests) - base >= after_requests,
            f"{after_requests} requests",
            sig,
            timeout,
            delay,
        )


def kill_after_commits(site: Site, args: tuple[str, ...], commits: int, timeout: float = 60) -> int:
    """Start `rcs-sync ARGS` and SIGKILL it once it has logged `commits` committed windows.

    A `window_loaded` line is written after its window's commit, so the kill comes that
    far in on a quiet machine or a loaded one alike; a count of requests does not (up to
    2 x concurrency windows are downloaded ahead of the writer). Returns the exit code."""
    loaded = [0]

    def count(lines: Iterator[str]) -> None:
        for line in lines:
            if '"window_loaded"' in line:
                loaded[0] += 1

    with _running(site, args, stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        reader = threading.Thread(target=count, args=(proc.stderr,), daemon=True)
        reader.start()
        code = _signal_when(
            proc,
            lambda: loaded[0] >= commits,
            f"{commits} committed windows",
            signal.SIGKILL,
            timeout,
        )
    reader.join(timeout)
    return code


COMMITTED_MARGIN = timedelta(hours=6)
"""Ledger rows read this long before the signalled pass began (by the server's clock)
are older reads: the catch-up trial ages them by 50 hours."""


def _committed_since(site: Site, since: datetime) -> list[tuple[datetime, datetime]]:
    """The windows the ledger says were read since `since` (the signalled pass's)."""
    rows = site.query(
        "SELECT window_start, window_end FROM sync_windows WHERE fetched_at >= ?", [since]
    )
    return [(start, end) for start, end in rows]


def inside_read(request: RequestLog, windows: list[tuple[datetime, datetime]]) -> bool:
    """A full-window read (not an incremental one) that lies within one of `windows`:
    nothing in it was left to read. A window that reaches past what was read (the
    current day, whose end moves with the clock) is read again, rightly."""
    if "modified_since" in request.params or "start" not in request.params:
        return False
    start = datetime.fromisoformat(request.params["start"]) + BOUNDARY_PAD
    end = datetime.fromisoformat(request.params["end"])
    return any(low <= start and end <= high for low, high in windows)


def _strike(site: Site, trial: KillTrial) -> KillTrial:
    """Signal the pass as the trial says, then rerun the same command and compare."""
    began = site.sim.sim.now()
    code = signal_pass(site, trial.command, trial.after_requests, trial.delay, trial.signal)
    trial.exit_code = code
    trial.killed = code == -signal.SIGKILL if trial.signal == signal.SIGKILL else code == 130
    if site.exists():
        opens_cleanly(site, migrated=False)
    trial.windows_before = windows_done(site) if _migrated(site) else 0
    committed = _committed_since(site, began - COMMITTED_MARGIN) if _migrated(site) else []
    before = len(site.sim.sim.requests)
    rerun = site.run(*trial.command)
    trial.rerun_exit = rerun.returncode
    trial.rerun_stderr = rerun.stderr[-3000:]
    # Requests the server answered in full; a faulted one is retried, not re-read.
    answered = [r for r in site.sim.sim.requests[before:] if r.fault is None]
    trial.rerun_requests = len(answered)
    trial.rereads = sum(1 for r in answered if inside_read(r, committed))
    opens_cleanly(site)
    trial.windows_after = windows_done(site)
    trial.comparison = compare(site)
    return trial


def backfill_kill_trial(
    site: Site,
    seed: int,
    windows: int,
    sig: signal.Signals = signal.SIGKILL,
    command: str = "sync",
) -> KillTrial:
    """Signal a site's first `sync` (a backfill of about `windows` windows), or a
    `backfill` over everything, at a moment drawn from `seed`; then rerun it. Give the
    simulator some latency so the pass lasts."""
    rng = random.Random(seed)
    trial = KillTrial(seed, "backfill", rng.randrange(0, windows - 1), rng.uniform(0, 0.12), sig)
    if trial.after_requests == 0:
        trial.delay = rng.uniform(0.05, 0.8)  # start-up, migrations, or the first request
    if command == "backfill":
        now = site.sim.sim.now()
        start = day_start(now) - timedelta(days=site.sim.sim.config.days + 1)
        end = now + timedelta(hours=1)
        trial.command = ("backfill", "--start", format_instant(start), "--end", iso(end))
    return _strike(site, trial)


def incremental_kill_trial(
    site: Site, seed: int, mutations: int = 60, sig: signal.Signals = signal.SIGKILL
) -> KillTrial:
    """On a site already backfilled: move the clock, change states, signal an
    incremental `sync` at a moment drawn from `seed`, rerun it."""
    rng = random.Random(seed)
    site.sim.sim.advance(rng.uniform(30, 600))
    site.sim.sim.mutate(rng.randrange(1, mutations))
    after = rng.choice((0, 1, 1, 1))
    trial = KillTrial(seed, "incremental", after, rng.uniform(0, 0.15), sig)
    if trial.after_requests == 0:
        trial.delay = rng.uniform(0.05, 0.7)
    return _strike(site, trial)


def catchup_kill_trial(site: Site, seed: int, windows: int) -> KillTrial:
    """On a site already synced: age its bookkeeping by 50 hours (as if the daemon had
    been down that long), change states, SIGKILL the catch-up at a seeded moment, rerun."""
    rng = random.Random(seed)
    site.execute("UPDATE sync_checkpoints SET checkpoint = checkpoint - INTERVAL 50 HOUR")
    site.execute("UPDATE sync_windows SET fetched_at = fetched_at - INTERVAL 50 HOUR")
    site.sim.sim.advance(rng.uniform(1, 60))
    site.sim.sim.mutate(rng.randrange(1, 80))
    trial = KillTrial(seed, "catchup", rng.randrange(0, windows - 1), rng.uniform(0, 0.12))
    if trial.after_requests == 0:
        trial.delay = rng.uniform(0.05, 0.7)
    return _strike(site, trial)


def iso(moment: datetime) -> str:
    return format_instant(moment)


# --- a hand-written API ------------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """One element of a crafted response: raw JSON bytes, served to every request whose
    [start, end] holds `at` (one window of a backfill)."""

    at: datetime
    raw: bytes


@dataclass
class CraftedApi:
    """A tiny `/j/rcs_records` on 127.0.0.1 serving hand-written bytes.

    It behaves like the provider where the client relies on it (Bearer token else 403,
    a `Date` header, `start`/`end` filtering, a JSON content type) and sends the elements
    byte for byte. `redirect_to` answers every request with a 302 there instead.
    """

    elements: list[Element] = field(default_factory=list)
    token: str = TOKEN
    redirect_to: str | None = None
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve https
    requests: list[dict[str, str]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: `api.requests` is the log."""

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                api.requests.append(params)
                auth = self.headers.get("Authorization") or ""
                api.authorizations.append(auth)
                if api.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", api.redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not hmac.compare_digest(auth.encode(), f"Bearer {api.token}".encode()):
                    self._send(403, b'{"error":"forbidden"}')
                    return
                start = datetime.fromisoformat(params["start"])
                end = datetime.fromisoformat(params["end"])
                chosen = [e.raw for e in api.elements if start <= e.at <= end]
                self._send(200, b"[" + b",\n".join(chosen) + b"]")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def date_time_string(self, timestamp: float | None = None) -> str:
                return formatdate(timestamp, usegmt=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_port
        scheme = "http"
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> CraftedApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def self_signed_certificate(directory: Path) -> tuple[Path, Path] | str:
    """A certificate for 127.0.0.1 and its key, made by the openssl CLI; or why not."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return "the openssl command is not installed"
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        return f"openssl failed: {result.stderr.strip()[-300:]}"
    return cert, key


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- file systems ------------------------------------------------------------------------


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` on `path`; None once mounted, else why it could not be."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount could not run: {exc}"
    if result.returncode != 0:
        return (result.stderr or result.stdout).strip() or f"mount exited {result.returncode}"
    return None


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False, timeout=30)


def fill(directory: Path, leave_bytes: int) -> Path:
    """Fill the file system of `directory` until about `leave_bytes` stay free."""
    filler = directory / "filler.bin"
    stats = os.statvfs(directory)
    remaining = stats.f_bavail * stats.f_frsize - leave_bytes
    block = b"\0" * (1 << 20)
    with filler.open("wb") as out:
        while remaining > 0:
            chunk = block[: min(len(block), remaining)]
            out.write(chunk)
            remaining -= len(chunk)
    return filler


def free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


# --- processes ---------------------------------------------------------------------------


def cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def runs_command(pid: int, command: str) -> bool:
    """Whether process `pid` is `rcs-sync … COMMAND …` (an argument, not a substring:
    the config path `rcs-sync.toml` holds "sync"). A pass the daemon forks has its
    arguments in its title, separated by spaces."""
    return command.encode() in cmdline(pid).replace(b"\0", b" ").split()


def environ(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/environ").read_bytes()
    return b""


def parent(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return None


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    return [p for p in all_pids() if parent(p) == pid]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        below = children(frontier.pop())
        found += below
        frontier += below
    return found


def files_under(directory: Path) -> Iterator[Path]:
    return (p for p in sorted(directory.rglob("*")) if p.is_file())


def day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
