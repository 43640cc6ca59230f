"""systemd's notify protocol by hand: one datagram per message to $NOTIFY_SOCKET.

Silent no-op when not run by systemd; never raises (a lost notification must not take the daemon down).
"""
from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY=1, STATUS=..., STOPPING=1, WATCHDOG=1 to the service manager."""

    def __init__(self, env: dict | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or ""
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace socket
        self.address = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or (pid.isdigit() and int(pid) == os.getpid())
        # systemd asks for a ping at least every WATCHDOG_USEC; pinging twice as often is its advice.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and ours else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
