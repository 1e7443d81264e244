"""A scripted, fault-injecting IMAP server for fetchpop's IMAP target tests.

A real server on 127.0.0.1:0 in a background thread, one thread per
connection, speaking the part of IMAP4rev1 (RFC 3501) that an APPEND target
uses: CAPABILITY, LOGIN, AUTHENTICATE PLAIN / XOAUTH2, STATUS, SELECT and
EXAMINE, CREATE, APPEND (synchronising literals, LITERAL+ and, with BINARY,
literal8), UID SEARCH (UID range, HEADER), UID FETCH (UID, RFC822.SIZE),
NOOP and LOGOUT. Mailboxes are kept in memory, messages as the APPEND
literal's bytes.

Faults are data: ``Fault("APPEND", "no", code="OVERQUOTA")``. The first
matching fault (by command name, and session index if given) replaces the
command's normal handling, *times* times (default once). Actions:

* ``"no"`` / ``"bad"``: a tagged NO or BAD (with *code*);
* ``"drop"``: hang up instead of answering (for APPEND: before the literal's
  continuation);
* ``"drop-after-literal"``: APPEND stores the message, then hangs up before
  the tagged OK;
* ``"hold-after-literal"``: APPEND stores the message and never answers
  (until the server closes), for SIGKILL tests: ``appended`` is set;
* ``"refuse"``: on the greeting: a ``* BYE`` and a hang-up.

``commands`` lists every command line each session received (literals
left out); ``errors`` holds the server's own bugs, which a test asserts empty.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import threading
from dataclasses import dataclass, field

CRLF = b"\r\n"
DEFAULT_CAPS = ("IMAP4rev1", "UIDPLUS", "LITERAL+", "AUTH=PLAIN", "SASL-IR")
_LITERAL = re.compile(rb"(~?)\{(\d+)(\+?)\}$")


@dataclass
class Fault:
    command: str  # "LOGIN", "APPEND", "STATUS", ... or "greeting"
    action: str
    code: str | None = None
    session: int | None = None
    times: int = 1

    def matches(self, name: str, session: int) -> bool:
        if self.times <= 0 or name != self.command:
            return False
        return self.session is None or self.session == session


@dataclass
class Message:
    uid: int
    data: bytes
    flags: tuple[str, ...] = ()
    date: str | None = None


@dataclass
class Mailbox:
    uidvalidity: int = 1234
    uidnext: int = 1
    messages: list[Message] = field(default_factory=list)

    def add(self, data: bytes, flags: tuple[str, ...] = (), date: str | None = None) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.messages.append(Message(uid, data, flags, date))
        return uid


class _Hangup(Exception):
    pass


class FakeIMAP:
    """The server; ``with FakeIMAP() as server: ... server.port``."""

    def __init__(
        self,
        *,
        user: str = "bob",
        password: str = "imap-secret",
        token: str | None = None,
        caps: tuple[str, ...] = DEFAULT_CAPS,
        mailboxes: tuple[str, ...] = ("INBOX",),
        faults: list[Fault] | None = None,
    ) -> None:
        self.user, self.password, self.token = user, password, token
        self.caps = caps
        self.mailboxes: dict[str, Mailbox] = {name: Mailbox() for name in mailboxes}
        self.faults = faults or []
        self.commands: list[list[str]] = []
        self.errors: list[str] = []
        self.appended = threading.Event()
        self.port = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    # -- life -------------------------------------------------------------------------

    def __enter__(self) -> FakeIMAP:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.05)
        self._listener = listener
        self.port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        for thread in self._threads:
            thread.join(5)
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                index = len(self.commands)
                self.commands.append([])
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            thread.start()
            self._threads.append(thread)

    def messages(self, mailbox: str = "INBOX") -> list[bytes]:
        return [m.data for m in self.mailboxes[mailbox].messages]

    def names(self, session: int | None = None) -> list[str]:
        """The command names received (all sessions, or one)."""
        groups = self.commands if session is None else [self.commands[session]]
        out = []
        for lines in groups:
            for line in lines:
                words = line.split(" ")
                name = words[1].upper() if len(words) > 1 else ""
                if name == "UID" and len(words) > 2:
                    name += " " + words[2].upper()
                out.append(name)
        return out

    # -- one connection ------------------------------------------------------------

    def _fault(self, name: str, session: int) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(name, session):
                    fault.times -= 1
                    return fault
        return None

    def _serve(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(0.05)
        session = _Session(self, conn, index)
        try:
            session.run()
        except (_Hangup, OSError):
            pass
        except Exception as exc:  # a bug in the harness
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()


class _Session:
    def __init__(self, server: FakeIMAP, conn: socket.socket, index: int) -> None:
        self.server = server
        self.conn = conn
        self.index = index
        self.buffer = bytearray()
        self.authed = False
        self.selected: str | None = None

    # -- I/O ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def _fill(self) -> None:
        while not self.server._stop.is_set():
            try:
                data = self.conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise _Hangup
            self.buffer += data
            return
        raise _Hangup

    def line(self) -> bytes:
        while (end := self.buffer.find(CRLF)) < 0:
            self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def hold(self) -> None:
        while not self.server._stop.wait(0.05):
            pass
        raise _Hangup

    # -- the protocol ------------------------------------------------------------------

    def run(self) -> None:
        fault = self.server._fault("greeting", self.index)
        if fault is not None and fault.action == "refuse":
            self.send(b"* BYE not now\r\n")
            raise _Hangup
        caps = " ".join(self.server.caps).encode()
        self.send(b"* OK [CAPABILITY " + caps + b"] fakeimap ready\r\n")
        while True:
            line = self.line()
            self.server.commands[self.index].append(line.decode("utf-8", "replace"))
            tag, _, rest = line.partition(b" ")
            name, _, args = rest.partition(b" ")
            upper = name.upper().decode("ascii", "replace")
            if upper == "UID":
                sub, _, args = args.partition(b" ")
                upper = "UID " + sub.upper().decode("ascii", "replace")
            fault = self.server._fault(upper, self.index)
            if fault is not None and fault.action in ("no", "bad", "drop"):
                if upper in ("APPEND", "LOGIN"):
                    args = self._literal_args(args, read=fault.action != "drop" and
                                              args.endswith(b"+}"))
                if fault.action == "drop":
                    raise _Hangup
                code = f"[{fault.code}] " if fault.code else ""
                self.send(tag + f" {fault.action.upper()} {code}refused by script\r\n".encode())
                continue
            handler = getattr(self, "do_" + upper.replace(" ", "_"), None)
            if handler is None:
                self.send(tag + b" BAD unknown command\r\n")
                continue
            handler(tag, args, fault)

    def _literal_args(self, args: bytes, *, read: bool = True) -> bytes:
        """Resolve literals in *args*; returns the args with literals as quoted text."""
        out = bytearray()
        while True:
            match = _LITERAL.search(args)
            if not match:
                out += args
                return bytes(out)
            if not read:
                return bytes(out + args)
            size = int(match.group(2))
            if not match.group(3):
                self.send(b"+ go ahead\r\n")
            data = self.exact(size)
            escaped = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            out += args[: match.start()] + b'"' + escaped + b'"'
            args = self.line()

    def ok(self, tag: bytes, text: str = "done", code: str | None = None) -> None:
        self.send(tag + b" OK " + (f"[{code}] " if code else "").encode() + text.encode() + CRLF)

    def do_CAPABILITY(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        self.send(b"* CAPABILITY " + " ".join(self.server.caps).encode() + CRLF)
        self.ok(tag)

    def do_NOOP(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        self.ok(tag)

    def do_LOGOUT(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        self.send(b"* BYE bye\r\n")
        self.ok(tag)
        raise _Hangup

    def do_LOGIN(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        words = _words(self._literal_args(args))
        if words == [self.server.user, self.server.password]:
            self.authed = True
            self.ok(tag, "logged in")
        else:
            self.send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    def do_AUTHENTICATE(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        mech, _, initial = args.partition(b" ")
        if not initial:
            self.send(b"+ \r\n")
            initial = self.line()
        raw = base64.b64decode(initial) if initial != b"=" else b""
        good = False
        if mech.upper() == b"PLAIN":
            parts = raw.split(b"\0")
            good = parts[1:] == [self.server.user.encode(), self.server.password.encode()]
        elif mech.upper() == b"XOAUTH2" and self.server.token:
            expected = f"user={self.server.user}\x01auth=Bearer {self.server.token}\x01\x01"
            good = raw == expected.encode()
            if not good:
                self.send(b"+ " + base64.b64encode(b'{"status":"401"}') + CRLF)
                self.line()
        if good:
            self.authed = True
            self.ok(tag, "logged in")
        else:
            self.send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    def _mailbox(self, tag: bytes, arg: bytes) -> Mailbox | None:
        name = _words(arg)[0]
        box = self.server.mailboxes.get("INBOX" if name.upper() == "INBOX" else name)
        if box is None:
            self.send(tag + b" NO [TRYCREATE] Mailbox doesn't exist\r\n")
        return box

    def do_STATUS(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        box = self._mailbox(tag, self._literal_args(args))
        if box is not None:
            name = _words(args)[0]
            self.send(
                f'* STATUS "{name}" (UIDNEXT {box.uidnext} UIDVALIDITY {box.uidvalidity})\r\n'
                .encode()
            )
            self.ok(tag)

    def do_EXAMINE(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        box = self._mailbox(tag, args)
        if box is not None:
            self.selected = _words(args)[0]
            self.send(b"* %d EXISTS\r\n" % len(box.messages))
            self.send(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % box.uidvalidity)
            self.send(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % box.uidnext)
            self.ok(tag, "read-only", "READ-ONLY")

    do_SELECT = do_EXAMINE

    def do_CREATE(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        name = _words(self._literal_args(args))[0]
        if name in self.server.mailboxes:
            self.send(tag + b" NO [ALREADYEXISTS] exists\r\n")
            return
        self.server.mailboxes[name] = Mailbox(uidvalidity=777)
        self.ok(tag)

    def do_APPEND(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        match = _LITERAL.search(args)
        if match is None:
            self.send(tag + b" BAD no literal\r\n")
            return
        binary, size, plus = match.group(1), int(match.group(2)), match.group(3)
        head = args[: match.start()].strip()
        words = _words(head)
        box = self.server.mailboxes.get("INBOX" if words[0].upper() == "INBOX" else words[0])
        if binary and "BINARY" not in self.server.caps:
            self.send(tag + b" BAD no BINARY here\r\n")
            return
        if box is None and not plus:
            self.send(tag + b" NO [TRYCREATE] Mailbox doesn't exist\r\n")
            return
        if not plus:
            self.send(b"+ OK\r\n")
        data = self.exact(size)
        self.line()  # the CRLF that ends the command
        if box is None:
            self.send(tag + b" NO [TRYCREATE] Mailbox doesn't exist\r\n")
            return
        if b"\0" in data and not binary:
            self.send(tag + b" NO NUL in a literal\r\n")
            return
        flags = tuple(re.findall(r"\\?[\w$]+", head.split(b"(", 1)[1].split(b")")[0].decode())) \
            if b"(" in head else ()
        date = re.search(rb'"(\s?\d+-\w+-\d+ [\d:]+ [+-]\d{4})"', head)
        uid = box.add(data, flags, date.group(1).decode() if date else None)
        self.server.appended.set()
        if fault is not None and fault.action == "drop-after-literal":
            raise _Hangup
        if fault is not None and fault.action == "hold-after-literal":
            self.hold()
        code = f"APPENDUID {box.uidvalidity} {uid}" if "UIDPLUS" in self.server.caps else None
        self.ok(tag, "appended", code)

    def do_UID_SEARCH(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        box = self.server.mailboxes.get(self.selected or "")
        if box is None:
            self.send(tag + b" BAD no mailbox selected\r\n")
            return
        words = _words(self._literal_args(args))
        low, wanted = 1, None
        i = 0
        while i < len(words):
            word = words[i].upper()
            if word == "UID":
                low = int(words[i + 1].split(":")[0])
                i += 2
            elif word == "HEADER":
                wanted = (words[i + 1].lower(), words[i + 2].lower())
                i += 3
            else:
                i += 1
        hits = []
        for msg in box.messages:
            if msg.uid < low:
                continue
            if wanted is not None:
                head = msg.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").lower()
                fields = [ln for ln in head.split("\r\n") if ln.startswith(wanted[0] + ":")]
                if not any(wanted[1] in f for f in fields):
                    continue
            hits.append(msg.uid)
        self.send(b"* SEARCH" + b"".join(b" %d" % u for u in hits) + CRLF)
        self.ok(tag)

    def do_UID_FETCH(self, tag: bytes, args: bytes, fault: Fault | None) -> None:
        box = self.server.mailboxes.get(self.selected or "")
        assert box is not None
        wanted = {int(u) for u in args.split(b" ", 1)[0].split(b",")}
        for n, msg in enumerate(box.messages, 1):
            if msg.uid in wanted:
                self.send(b"* %d FETCH (UID %d RFC822.SIZE %d)\r\n" % (n, msg.uid, len(msg.data)))
        self.ok(tag)


def _words(args: bytes) -> list[str]:
    """Atoms and quoted strings (a literal already resolved to a quoted one)."""
    out = []
    for match in re.finditer(rb'"((?:[^"\\]|\\.)*)"|\(([^)]*)\)|(\S+)', args):
        if match.group(1) is not None:
            out.append(re.sub(rb"\\(.)", rb"\1", match.group(1)).decode("utf-8", "replace"))
        elif match.group(2) is not None:
            out.append("(" + match.group(2).decode() + ")")
        else:
            out.append(match.group(3).decode("utf-8", "replace"))
    return out
