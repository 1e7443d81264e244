"""A Transport over a unix-domain socket (an LMTP server's, such as Dovecot's
/run/dovecot/lmtp).

:class:`~fetchpop.pop3.transport.Transport` connects over TCP only; this
makes the socket, connects it, and hands it over, so everything after the
connect (timeouts, the stop check, the bounds on waiting) is the
transport's. (When transport.py gains a unix-socket connect, this goes.)
"""

from __future__ import annotations

import socket
from pathlib import Path

from fetchpop.errors import ConnectError
from fetchpop.pop3.transport import Transport


def connect_unix(path: Path, *, timeout: float) -> Transport:
    """Connect to the unix socket at *path*; ConnectError (75) when nobody listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConnectError(f"cannot connect to {path}: {reason}") from exc
    except BaseException:
        sock.close()
        raise
    return Transport(sock, str(path), timeout)
