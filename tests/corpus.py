"""Deterministic test messages (raw bytes, LF line ends, as stored in a Maildir).

* :func:`hard_messages` - a corpus of awkward messages for correctness tests.
* :func:`small_messages` - uniform plain messages for benchmarks.

Every message carries a unique ``Message-ID`` so tests can match what was
delivered to what was sent.
"""

from __future__ import annotations

import base64
import functools
import random

__all__ = ["HARD_SPECIAL_COUNT", "big_attachment_message", "hard_messages", "small_messages"]

_DOMAIN = "fetchpop.test"


def _headers(rng: random.Random, mid: str, subject: bytes) -> bytes:
    day = rng.randrange(1, 29)
    return (
        b"Return-Path: <sender@example.org>\n"
        b"From: Sender <sender@example.org>\n"
        b"To: Alice <alice@example.net>\n"
        b"Date: Tue, %02d Feb 2025 10:%02d:%02d +0100\n"
        b"Message-ID: <%s@"
        % (day, rng.randrange(60), rng.randrange(60), mid.encode())
        + _DOMAIN.encode()
        + b">\nSubject: "
        + subject
        + b"\n"
    )


def _special_messages(big_size: int) -> list[bytes]:
    """The fixed awkward cases (the big attachment is added separately)."""
    rng = random.Random(4242)
    msgs: list[bytes] = []

    def add(subject: bytes, rest: bytes) -> None:
        msgs.append(_headers(rng, f"special-{len(msgs)}", subject) + rest)

    # Dot lines: must be dot-stuffed on the wire and unstuffed by the client.
    add(
        b"dot lines",
        b"\n.\nbody\n.\n..\n.x\n...\n. \n....\n..\nend\n.\n",
    )
    # Body consisting only of a single dot line.
    add(b"only a dot", b"\n.\n")
    # mbox-style From lines must not be quoted or altered.
    add(
        b"From lines",
        b"\nFrom here on\nFrom \n>From quoted once\n>>From quoted twice\n"
        b"From sender@example.org Tue Feb  4 10:00:00 2025\nfrom lower\n",
    )
    # Lines longer than the RFC 5322 limit of 998 octets.
    long_lines = b"".join(
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(k)) + b"\n"
        for k in (997, 998, 999, 1000, 2047, 2048, 2049, 5000)
    )
    add(b"long lines", b"\n" + long_lines + b"x" * 100_000 + b"\n")
    # Raw 8-bit in headers and body: UTF-8 and Latin-1.
    utf8 = "Grüße, ÆØÅ, 日本語, emoji 📬".encode()
    latin1 = "Grüße aus Köln, ça va? ñ ß".encode("latin-1")
    msgs.append(
        b"From: J\xc3\xb6rg <joerg@example.org>\nTo: alice@example.net\n"
        b"Message-ID: <special-8bit-utf8@fetchpop.test>\nSubject: " + utf8 + b"\n"
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        + utf8
        + b"\n"
        + utf8 * 20
        + b"\n"
    )
    msgs.append(
        b"From: J\xf6rg <joerg@example.org>\nTo: alice@example.net\n"
        b"Message-ID: <special-8bit-latin1@fetchpop.test>\nSubject: " + latin1 + b"\n"
        b"Content-Type: text/plain; charset=iso-8859-1\n\n"
        + latin1
        + b"\n"
        + bytes(range(0x80, 0x100))
        + b"\n"
    )
    # NUL bytes in the body (and one in a header).
    add(b"NUL\x00bytes", b"\nbefore\x00after\n\x00\n\x00\x00\x00 trailing\nend\n")
    # No final newline.
    add(b"no final newline", b"\nline one\nlast line without newline")
    # No final newline, last line is a dot.
    add(b"no final newline, dot", b"\nline one\n.")
    # Header-only: no blank line, no body.
    add(b"header only", b"")
    # Empty body: headers and the blank separator line, nothing more.
    add(b"empty body", b"\n")
    # Lone CR inside lines (not followed by LF).
    add(b"lone CR", b"\nbefore\rafter\n\rstart\nend\r x\n\r\r\rmany\n")
    # Blank lines, whitespace-only lines, trailing whitespace.
    add(b"blank lines", b"\n\n\n   \n\t\ntrailing spaces   \n\n\n")
    # Folded header and a very long header line.
    add(
        b"folded\n header\n\tcontinues",
        b"X-Long: " + b"h" * 3000 + b"\n\nbody\n",
    )
    # Multipart with a small binary-ish attachment.
    add(
        b"small attachment",
        b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b1"\n\n'
        b"--b1\nContent-Type: text/plain\n\nhello\n.\n--b1\n"
        b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(rng.randbytes(3000))
        + b"--b1--\n",
    )
    if big_size > 0:
        msgs.append(big_attachment_message(big_size))
    return msgs


HARD_SPECIAL_COUNT = len(_special_messages(0)) + 1
"""Number of fixed special cases in :func:`hard_messages` (with the big one)."""


@functools.lru_cache(maxsize=4)
def big_attachment_message(size: int = 20 * 1024 * 1024) -> bytes:
    """A MIME message with one base64 attachment of ``size`` bytes of base64 text.

    Lines are 76 characters plus LF; the result is slightly larger than
    ``size`` (headers).  Deterministic and cached.
    """
    rng = random.Random(size)
    raw = rng.randbytes(size * 57 // 77 + 57)
    b64 = base64.encodebytes(raw)[:size]
    b64 = b64[: b64.rfind(b"\n") + 1]
    return (
        b"From: big@example.org\nTo: alice@example.net\n"
        b"Message-ID: <special-big-%d@fetchpop.test>\nSubject: big attachment\n"
        b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="BIG"\n\n'
        b"--BIG\nContent-Type: text/plain\n\nsee attachment\n--BIG\n"
        b'Content-Type: application/octet-stream; name="big.bin"\n'
        b"Content-Transfer-Encoding: base64\n\n" % size + b64 + b"--BIG--\n"
    )


_ALPHABET = b"abcdefghij klmnopqrstuvwxyz.,0123456789"
_RANDOM_LINE_STARTS = [b"", b"", b"", b"", b".", b"..", b"From ", b">From ", b" ", b"\t"]


def _random_message(rng: random.Random, i: int) -> bytes:
    body = bytearray()
    for _ in range(rng.randrange(0, 60)):
        start = rng.choice(_RANDOM_LINE_STARTS)
        length = rng.choice([0, 1, 5, 40, 72, 76, 78, 200])
        kind = rng.random()
        if kind < 0.8:
            text = bytes(rng.choice(_ALPHABET) for _ in range(length))
        elif kind < 0.9:
            text = "äöü€ß".encode() * (length // 10 + 1)
        else:
            text = rng.randbytes(length).replace(b"\n", b"").replace(b"\r", b"")
        body += start + text + b"\n"
    if rng.random() < 0.1:
        body += b"."  # ends in a dot line without newline
    return _headers(rng, f"random-{i}", b"random %d" % i) + b"\n" + bytes(body)


def hard_messages(n: int = 300, big_size: int = 20 * 1024 * 1024, *, seed: int = 1) -> list[bytes]:
    """Return ``n`` awkward messages (LF line ends), deterministic for a given seed.

    Contains, in a seeded-shuffled order: body lines ``.``, ``..``, ``.x``,
    ``...``; ``From ``/``>From ``/``>>From `` lines; lines of 997..5000 and
    100000 octets; raw UTF-8 and Latin-1 8-bit headers and bodies; NUL
    bytes; messages without a final newline; a header-only message (no
    blank line); an empty-body message; lone CRs inside lines; a folded and
    a 3000-octet header; a small MIME attachment; one base64 attachment of
    about ``big_size`` bytes (omitted if ``big_size`` is 0); the rest small
    random messages sprinkled with dot and From lines.  ``n`` must be at
    least :data:`HARD_SPECIAL_COUNT` (one less without the big message).
    """
    specials = _special_messages(big_size)
    if n < len(specials):
        raise ValueError(f"n must be >= {len(specials)}")
    rng = random.Random(seed)
    msgs = specials + [_random_message(rng, i) for i in range(n - len(specials))]
    rng.shuffle(msgs)
    return msgs


def small_messages(n: int, size: int = 4096, *, seed: int = 2) -> list[bytes]:
    """Return ``n`` plain ASCII messages of exactly ``size`` bytes each (if ``size``
    is at least ~300), LF line ends, unique Message-IDs; for benchmarks.
    """
    rng = random.Random(seed)
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmn.\n"
    msgs = []
    for i in range(n):
        head = _headers(rng, f"small-{i}", b"benchmark message %d" % i) + b"\n"
        fill = max(size - len(head), 1)
        body = (line * (fill // len(line) + 1))[: fill - 1] + b"\n"
        msgs.append(head + body)
    return msgs
