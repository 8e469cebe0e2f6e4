"""systemd's notify protocol (sd_notify) without a C dependency.

One datagram per message to the AF_UNIX socket named by $NOTIFY_SOCKET (a leading `@`
means the abstract namespace). Outside systemd the variable is unset and every call is
a no-op, so the daemon runs the same way in a terminal.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import timedelta

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        owned = not pid or pid == str(os.getpid())
        self.watchdog = (
            timedelta(microseconds=int(usec)) if usec.isdigit() and owned and int(usec) else None
        )
        """The watchdog timeout systemd expects pings within, if it set one for us."""

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: str) -> None:
        """Send `KEY=value` lines, e.g. send(READY="1", STATUS="…"); never raises."""
        if not self._address:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block: a listener that stopped reading must not freeze the daemon
                # (a blocked send is retried after every signal, so even SIGTERM hangs).
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def ping(self) -> None:
        self.send(WATCHDOG="1")

    def stopping(self, status: str) -> None:
        self.send(STOPPING="1", STATUS=status)
