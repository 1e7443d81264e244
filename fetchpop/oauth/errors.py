"""OAuth2 error responses (RFC 6749 section 5.2, RFC 8628 section 3.5) as OAuthError.

The server's ``error`` and ``error_description`` are sanitised before they go
into a message; a code without a description is put in words. The *hint*
callables add the advice that fits the step (sign in again, check the client
credentials, try later). No network here, and no tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fetchpop.errors import AuthError, ExitCode, sanitize

# RFC 6749 sections 4.1.2.1 and 5.2, RFC 8628 section 3.5: each code in words,
# for when the server sends no error_description.
_EXPLAIN: Mapping[str, str] = {
    "invalid_request": "the request was malformed or incomplete",
    "invalid_client": "the client was not recognised",
    "invalid_grant": "the authorization has expired or was revoked",
    "unauthorized_client": "this client may not use this kind of sign-in",
    "unsupported_grant_type": "the server does not offer this kind of sign-in",
    "unsupported_response_type": "the server does not offer this kind of sign-in",
    "invalid_scope": "the requested scope is invalid or not allowed",
    "access_denied": "the sign-in was declined",
    "server_error": "the server failed",
    "temporarily_unavailable": "the server is busy",
    "authorization_pending": "the sign-in is not finished yet",
    "slow_down": "polling too fast",
    "expired_token": "the code expired before the sign-in was finished",
}
_TRANSIENT = frozenset({"server_error", "temporarily_unavailable"})


class OAuthError(AuthError):
    """An OAuth2 error response; ``error`` is its code (``invalid_grant`` ...).

    Exit 77 (NOPERM), except ``server_error`` and ``temporarily_unavailable``: 75.
    """

    def __init__(self, message: str, error: str, description: str | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.description = description
        if error in _TRANSIENT:
            self.exit_code = ExitCode.TEMPFAIL


def _oauth_error(what: str, data: Mapping[str, Any], hint: Callable[[str], str]) -> OAuthError:
    # RFC 6749 section 5.2 limits both fields to printable ASCII; a server
    # that sends more gets it shown with control characters replaced.
    code = sanitize(str(data.get("error")), limit=60)
    raw_description = data.get("error_description")
    description = sanitize(raw_description, 200) if isinstance(raw_description, str) else None
    detail = description or _EXPLAIN.get(code)
    text = f"{what} failed ({code}: {detail})" if detail else f"{what} failed ({code})"
    return OAuthError(text + hint(code), code, description)


def _no_hint(_code: str) -> str:
    return ""


def _relogin_hint(account_name: str) -> Callable[[str], str]:
    def hint(code: str) -> str:
        if code == "invalid_client":
            return "; check oauth_client_id and oauth_client_secret"
        if code in _TRANSIENT:
            return "; try again later"
        return f"; run `fetchpop oauth login {account_name}` again"

    return hint
