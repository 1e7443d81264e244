"""What a POP3 session sent as a credential, hidden wherever the server's text goes.

A server may say back what it was sent: ``-ERR invalid password 'hunter2'``,
or the base64 of a SASL response, in a reply to the login or to any command
after it. :class:`Secrets` holds every form of every credential one
connection sent -- the password or token itself, as ``sanitize`` shows it,
its base64 wherever it sits in a base64 string, the base64 of each SASL
response as sent, and what a mechanism derives and sends (SCRAM's proof) --
and :meth:`Secrets.hide` is the one function that replaces them with ``***``.

Who registers what: the protocol each credential argument and SASL response
it sends; the client the password it is given; each SASL mechanism its
secret and what it derives. Who hides: the protocol every text it parses
(a Reply carries masked text), the client every transcript line and the
errors of what it parses itself (listings, SASL challenges).
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator

from fetchpop.errors import CUT, FetchpopError, ServerError, cut, sanitize

#: What a secret becomes.
MASK = "***"
#: A shorter secret is not hidden: it would hide letters of ordinary words,
#: and where it hid them would tell what it is.
MIN_SECRET = 4
#: The shortest run of base64 characters that stands for part of a secret
#: inside a longer base64 string: shorter ones would hide ordinary words.
_MIN_CORE = 8


def _cores(raw: bytes) -> list[str]:
    """What base64 text shows of *raw* wherever it sits in a longer encoded
    string: for each of the three alignments, the characters that depend on
    *raw*'s bits alone."""
    out = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii")
        # Character i carries bits 6i to 6i+6; raw holds bits 8*shift to 8*(shift+len).
        start, end = -(-4 * shift // 3), 4 * (shift + len(raw)) // 3
        if end - start >= _MIN_CORE:
            out.append(encoded[start:end])
    return out


class Secrets:
    """Every form of the credentials one connection sent; :meth:`hide` masks them."""

    __slots__ = ("_forms", "_pattern")

    def __init__(self) -> None:
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __repr__(self) -> str:
        return f"<Secrets: {len(self._forms)} forms hidden>"

    def add(self, *secrets: str) -> None:
        """Hide each of *secrets*: itself, as sanitize() shows it, and its base64
        (alone, and inside any longer base64 string)."""
        for secret in secrets:
            if len(secret) >= MIN_SECRET:
                raw = secret.encode("utf-8", "replace")
                self._add(
                    secret,
                    sanitize(secret, len(secret)),
                    base64.b64encode(raw).decode("ascii"),
                    *_cores(raw),
                )

    def add_sent(self, payload: bytes) -> None:
        """Hide a SASL response (or initial response) as sent: its base64."""
        self._add(payload.decode("ascii", "replace"))

    def update(self, other: Secrets) -> None:
        """Hide what *other* hides, too."""
        self._add(*other._forms)

    def _add(self, *forms: str) -> None:
        new = {form for form in forms if len(form) >= MIN_SECRET} - self._forms
        if new:
            self._forms |= new
            self._pattern = None  # made when first needed: most runs never show a line

    def hide(self, text: str) -> str:
        """*text* with every form of every secret replaced by ``***``."""
        if not any(form in text for form in self._forms):
            return text  # (every server reply comes here: a few substring looks)
        if self._pattern is None:
            # Longest first: a payload's base64 goes whole, not the secret inside it.
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered)))
        return self._pattern.sub(MASK, text)

    def show(self, data: str | bytes, limit: int = 300) -> str:
        """Server text for a person: sanitised, secrets hidden, and only then cut
        to *limit* characters (a cut first could leave half a secret)."""
        return cut(self.hide(sanitize(data, len(data))), limit)

    def scrub(self, exc: BaseException) -> None:
        """Hide secrets in *exc*'s message (and a ServerError's ``words``), and in
        the exceptions it was raised from.

        A message may hold text cut short before it got here: the beginning
        of a secret just before the ``...`` of the cut goes too.
        """
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            current.args = tuple(
                self._hide_cut(arg) if isinstance(arg, str) else arg for arg in current.args
            )
            if isinstance(current, ServerError):
                current.words = self._hide_cut(current.words)
            current = current.__cause__ or current.__context__

    @contextlib.contextmanager
    def scrubbing(self) -> Iterator[None]:
        """Scrub (see :meth:`scrub`) every FetchpopError raised inside."""
        try:
            yield
        except FetchpopError as exc:
            self.scrub(exc)
            raise

    def _hide_cut(self, text: str) -> str:
        text = self.hide(text)
        if CUT not in text or not self._forms:
            return text
        parts = text.split(CUT)
        return CUT.join([*map(self._unfinished, parts[:-1]), parts[-1]])

    def _unfinished(self, before: str) -> str:
        """*before* without the beginning of a secret at its end."""
        longest = 0
        for form in self._forms:
            for size in range(min(len(form) - 1, len(before)), longest, -1):
                if before.endswith(form[:size]):
                    longest = size
                    break
        return before[:-longest] + MASK if longest else before
