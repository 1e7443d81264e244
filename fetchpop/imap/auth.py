"""Which IMAP login an ``imap_auth`` value means, sans-IO.

LOGIN (RFC 3501 section 6.2.3) sends the user name and password as strings
(quoted, or literals for 8-bit and quotes: :func:`fetchpop.imap.protocol.astring`).
AUTHENTICATE (section 6.2.2) runs a SASL mechanism -- the very ones POP3's
AUTH uses (:mod:`fetchpop.pop3.auth`: PLAIN, SCRAM-SHA-1/256, XOAUTH2,
OAUTHBEARER), with the initial response on the command line where the
server offers SASL-IR (RFC 4959).
"""

from __future__ import annotations

from collections.abc import Iterable

from fetchpop.pop3 import auth
from fetchpop.pop3.auth import SASLMechanism

#: imap_auth values that carry an OAuth2 access token instead of a password.
OAUTH_METHODS = ("xoauth2", "oauthbearer")


def choose(method: str, capabilities: Iterable[str], *, tls: bool) -> str:
    """The method to use: *method*, or for ``auto`` the strongest the server
    offers (SCRAM, then PLAIN over TLS), else ``login``."""
    if method != "auto":
        return method
    offered = [c[5:] for c in capabilities if c.upper().startswith("AUTH=")]
    chosen = auth.choose_mechanism(offered, tls=tls)
    return chosen.lower() if chosen else "login"


def mechanism(method: str, user: str, secret: str, *, host: str, port: int) -> SASLMechanism:
    """The SASL mechanism for an AUTHENTICATE *method* (not ``login``)."""
    return auth.mechanism_for(method, user, secret, host=host, port=port)
