"""What identifies a message besides its UIDL: pure, bytes in, a short string out.

A UIDL is the server's word only; servers hand one out again for another
message (Dovecot with ``pop3_uidl_format = %u`` after its index is rebuilt,
popa3d's header hashes for a message sent twice, a provider's migration).
So a message delivered in an earlier session is deleted only when its
header, read again with ``TOP n 0``, names the same message:

* ``mid:<Message-ID>`` when the header has a Message-ID (RFC 5322 section
  3.6.4), the case of nearly every message;
* else ``hdr:`` and a digest of the header's fields, leaving out those a
  server or a mail reader may add or change after delivery (``Status``,
  ``X-UIDL``, which one real server writes into every message at QUIT, ...).

A size proves nothing either way: sizes are often equal, and servers
rewrite stored messages.
"""

from __future__ import annotations

import hashlib
import re

#: Fields that may change after a message was first served.
VOLATILE = frozenset(
    {
        b"status",
        b"x-status",
        b"x-uidl",
        b"x-keywords",
        b"x-mozilla-status",
        b"x-mozilla-status2",
        b"content-length",
        b"lines",
    }
)
#: The header is read this far at most (a longer one is cut there, the same
#: way every time).
MAX_HEADER = 64 * 1024

_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


def ident_of(header: bytes) -> str:
    """The identity of the message whose header block (LF line ends) is *header*."""
    fields = _unfolded(header[:MAX_HEADER])
    for name, value in fields:
        if name == b"message-id" and value.strip():
            return "mid:" + value.strip().decode("utf-8", "replace")
    kept = b"\n".join(n + b":" + v for n, v in fields if n not in VOLATILE)
    return "hdr:" + hashlib.sha256(kept).hexdigest()[:32]


def _unfolded(header: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of *header* as (lower-case name, value with folding undone)."""
    out: list[tuple[bytes, bytes]] = []
    for line in header.split(b"\n"):
        if line[:1] in (b" ", b"\t") and out:  # a folded continuation
            name, value = out[-1]
            out[-1] = (name, value + b" " + line.strip())
            continue
        match = _FIELD.match(line)
        if match:
            out.append((match.group(1).lower(), line[match.end() :].strip()))
    return out


class HeaderReader:
    """Collects a message's header block from its chunks as they stream past."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._done = False

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the message (LF line ends)."""
        if self._done:
            return
        start = max(0, len(self._buf) - 1)
        self._buf += chunk
        end = self._buf.find(b"\n\n", start)
        if end >= 0 or self._buf.startswith(b"\n"):
            del self._buf[max(end, 0) :]
            self._done = True
        elif len(self._buf) > MAX_HEADER:
            del self._buf[MAX_HEADER:]
            self._done = True

    def ident(self) -> str:
        """The identity of the message fed so far (see :func:`ident_of`)."""
        return ident_of(bytes(self._buf))
