"""What the real-server harnesses other than Dovecot share (tests/courier.py,
tests/cyrus.py, tests/popa3d.py).

Their Debian packages conflict with dovecot-pop3d, so ``.ci/servers`` unpacks
them into one tree (``$FETCHPOP_SERVER_ROOT``, default /opt/fetchpop-servers)
and the harnesses run the binaries from there, each server on free loopback
ports with its own configuration and state in a temporary directory.

Every harness offers the same small interface, which the matrix tests use:

* ``name``: "courier", "cyrus", "popa3d"
* ``host``: "127.0.0.1"; ``ports``: TLS mode -> port, for the modes it serves
  (``{"starttls": P, "implicit": Q}``, or ``{"off": P}`` for popa3d)
* ``ca_file``: the PEM file of the throw-away CA that signed the server's
  certificate (for the host name 127.0.0.1), or None without TLS
* ``add_user(user, password)``, ``add_message(user, raw)`` (raw: the stored
  bytes, LF line ends as a local MTA writes them), ``count(user)``
* ``raw_messages(user, password) -> list[tuple[str, bytes]]``: (UIDL, message)
  as an independent client (the stdlib's poplib) retrieves them now, CRLF
  turned into LF and dot-unstuffed, after UTF8 where the server offers it
  (RFC 6856): what fetchpop must deliver
* ``start()`` / ``stop()`` and use as a context manager.
"""

from __future__ import annotations

import contextlib
import os
import poplib
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

ROOT_ENV = "FETCHPOP_SERVER_ROOT"
DEFAULT_ROOT = "/opt/fetchpop-servers"
REQUIRE_ENV = "FETCHPOP_REQUIRE_SERVERS"


def server_root() -> Path:
    """Where ``.ci/servers`` unpacked the server packages."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def require(what: str, available: bool, why: str) -> None:
    """Skip the calling test when *what* cannot run here (fail with FETCHPOP_REQUIRE_SERVERS=1)."""
    if available:
        return
    import pytest

    message = f"{what} not available: {why} (run .ci/servers, as root)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}, but {REQUIRE_ENV}=1", pytrace=False)
    pytest.skip(message)


def members(group: int, *, field: int = 2) -> list[int]:
    """PIDs of live (non-zombie) processes whose process group (*field* 2 of
    /proc/PID/stat after the command) or session (*field* 3) is *group*."""
    pids = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parens.
            fields = stat[stat.rfind(b")") + 2 :].split()
            if fields[0] != b"Z" and int(fields[field]) == group:
                pids.append(int(entry))
    return pids


def kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group *proc* leads (``start_new_session=True``),
    SIGKILL after *grace* seconds, until no process of it is left; reaps *proc*."""
    pgid, sig = proc.pid, signal.SIGTERM
    deadline = time.monotonic() + grace
    while True:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)
        if proc.returncode is not None and not members(pgid):
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> bool:
    """Whether something accepts connections on 127.0.0.1:*port* within *timeout*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        time.sleep(0.05)
    return False


def stored(lines: list[bytes]) -> bytes:
    """poplib's RETR lines (CRLF removed and dot-unstuffed by poplib) as stored bytes."""
    return b"".join(line + b"\n" for line in lines)


def poplib_messages(
    host: str,
    port: int,
    user: str,
    password: str,
    *,
    mode: str = "off",
    ca_file: Path | None = None,
    timeout: float = 30.0,
) -> list[tuple[str, bytes]]:
    """(UIDL, message) for every message, as poplib retrieves them, then QUIT."""
    # poplib refuses lines over 2,048 octets; the corpus has a 3,000-character one.
    poplib._MAXLINE = max(poplib._MAXLINE, 1 << 20)  # type: ignore[attr-defined]
    context = None
    if mode != "off":
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if mode == "implicit":
        assert context is not None
        client: poplib.POP3 = poplib.POP3_SSL(host, port, timeout=timeout, context=context)
    else:
        client = poplib.POP3(host, port, timeout=timeout)
        if mode == "starttls":
            client.stls(context)
    try:
        with contextlib.suppress(poplib.error_proto):
            if "UTF8" in client.capa():
                # RFC 6856: without it Courier serves 8-bit headers in a wrapper.
                client._shortcmd("UTF8")
        client.user(user)
        client.pass_(password)
        out = []
        for entry in client.uidl()[1]:
            number, uidl = entry.split(None, 1)
            _, lines, _ = client.retr(int(number))
            out.append((uidl.decode("latin-1"), stored(lines)))
        client.quit()
        return out
    finally:
        with contextlib.suppress(OSError):
            client.close()
