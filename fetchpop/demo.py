"""``fetchpop demo``: a small POP3 server on loopback with sample mail.

It lets someone try fetchpop with no mail server at all. It speaks just
enough of RFC 1939 (USER/PASS, STAT, LIST, UIDL, RETR, DELE, RSET, NOOP, QUIT,
CAPA) for a real sync, over clear text on 127.0.0.1 only;
:func:`write_demo_config` writes the account for it.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Mapping
from email.utils import formatdate
from pathlib import Path

from fetchpop.config.writer import account_table, validate, write_config

USER = "demo"
PASSWORD = "demo"  # noqa: S105 - a throwaway account on a loopback demo server

_BODIES = [
    ("Welcome to fetchpop", "This message came from a POP3 server on 127.0.0.1.\n"),
    (
        "How fetchpop keeps your mail safe",
        "A message is deleted from the server only after it has been written to\n"
        "disk, fsynced and recorded. Kill fetchpop at any moment: the next run\n"
        "neither loses nor duplicates anything.\n",
    ),
    (
        "Lines that trip up other tools",
        "From here on, this line starts with From and is quoted in an mbox.\n"
        ".\n"
        "The line above is a single dot; POP3 byte-stuffs it on the wire.\n",
    ),
    ("Next steps", "Write ~/.config/fetchpop/config.toml (see fetchpop-config(5)).\n"),
]


def write_demo_config(path: Path, port: int, mail: Path, environ: Mapping[str, str]) -> None:
    """Write the config of the demo account: the server on *port*, into the Maildir *mail*.

    It replaces what is at *path* (an earlier demo's config) and is private,
    since it holds the password. Raises ConfigError, writing nothing, when it
    would not load.
    """
    keys = {
        "host": "127.0.0.1",
        "port": port,
        "tls": "off",
        "user": USER,
        "password": PASSWORD,
        "deliver": f"maildir:{mail}",
        "keep": False,
    }
    notes = {
        "tls": "the demo server is on this machine; never for a real one",
        "keep": "delete from the server once safely delivered",
    }
    header = "Written by `fetchpop demo`: a POP3 server on this machine with sample mail."
    text = account_table("demo", keys, comments=[header], notes=notes)
    validate(path, text, environ)
    write_config(path, text, mode=0o600)


def sample_messages() -> list[bytes]:
    """The demo mailbox: a few short messages with LF line ends."""
    out = []
    for i, (subject, body) in enumerate(_BODIES, 1):
        head = (
            f"From: fetchpop demo <demo@fetchpop.invalid>\n"
            f"To: you@localhost\n"
            f"Subject: {subject}\n"
            f"Date: {formatdate(localtime=False)}\n"
            f"Message-ID: <demo-{i}@fetchpop.invalid>\n\n"
        )
        out.append((head + body).encode())
    return out


class _Handler(socketserver.StreamRequestHandler):
    server: DemoServer
    #: The session's state: the messages marked deleted, the USER given, logged in.
    deleted: set[int]
    user: str | None
    authed: bool

    def _send(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.deleted, self.user, self.authed = set(), None, False
        self._send("+OK fetchpop demo server ready")
        while True:
            raw = self.rfile.readline(1024)
            if not raw:
                return
            words = raw.decode("ascii", "replace").strip().split()
            cmd, args = (words[0].upper(), words[1:]) if words else ("", [])
            with self.server.lock:
                if cmd == "QUIT":
                    self._quit()
                    return
                self._reply(cmd, args)

    def _quit(self) -> None:
        box = self.server
        if self.authed:
            box.messages = [m for i, m in enumerate(box.messages, 1) if i not in self.deleted]
        self._send("+OK bye")

    def _reply(self, cmd: str, args: list[str]) -> None:
        if cmd == "CAPA":
            self._send("+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.")
        elif cmd == "USER" and args:
            self.user = args[0]
            self._send("+OK")
        elif cmd == "PASS" and args:
            self.authed = self.user == USER and args[0] == PASSWORD
            self._send("+OK logged in" if self.authed else "-ERR [AUTH] wrong password")
        elif not self.authed:
            self._send("-ERR log in first")
        else:
            self._transaction(cmd, args)

    def _transaction(self, cmd: str, args: list[str]) -> None:
        box = self.server
        live = [(i, m) for i, m in enumerate(box.messages, 1) if i not in self.deleted]
        if cmd == "STAT":
            self._send(f"+OK {len(live)} {sum(len(m) for _, m in live)}")
        elif cmd in ("LIST", "UIDL") and not args:
            # LIST sizes count CRLF line ends, as on the wire.
            lines = [
                f"{i} {box.octets(m)}" if cmd == "LIST" else f"{i} {box.uidl(m)}" for i, m in live
            ]
            self._send("\r\n".join(["+OK", *lines, "."]))
        elif cmd in ("RETR", "DELE") and args and args[0].isdigit():
            self._message(cmd, int(args[0]), dict(live).get(int(args[0])))
        elif cmd == "RSET":
            self.deleted.clear()
            self._send("+OK")
        elif cmd == "NOOP":
            self._send("+OK")
        else:
            self._send("-ERR unknown command")

    def _message(self, cmd: str, number: int, found: bytes | None) -> None:
        if found is None:
            self._send("-ERR no such message")
        elif cmd == "DELE":
            self.deleted.add(number)
            self._send("+OK deleted")
        else:
            stuffed = [
                (b"." + ln if ln.startswith(b".") else ln)
                for ln in found.rstrip(b"\n").split(b"\n")
            ]
            self.wfile.write(b"+OK\r\n" + b"\r\n".join(stuffed) + b"\r\n.\r\n")


class DemoServer(socketserver.ThreadingTCPServer):
    """The demo POP3 server on 127.0.0.1, on a free port, in a thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, messages: list[bytes] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.messages = list(messages if messages is not None else sample_messages())
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server_address[1])

    @staticmethod
    def octets(message: bytes) -> int:
        """The message's size with CRLF line ends (RFC 1939 section 11)."""
        return len(message) + message.count(b"\n")

    @staticmethod
    def uidl(message: bytes) -> str:
        """A stable unique id for *message* (RFC 1939: 0x21..0x7E)."""
        import hashlib

        return hashlib.sha256(message).hexdigest()[:32]

    def __enter__(self) -> DemoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        super().server_bind()
