"""Every failure fetchpop knows by name, each carrying its exit status.

The codes are the BSD sysexits(3) values that mpop and msmtp use, so a cron job
or a systemd unit can tell "try again later" (75) from "fix the config" (78).
Only ``fetchpop.cli`` turns these into an exit status; everything else raises.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit statuses (sysexits.h), as documented in fetchpop(1)."""

    OK = 0
    USAGE = 64
    DATAERR = 65
    NOHOST = 68
    UNAVAILABLE = 69
    SOFTWARE = 70
    CANTCREAT = 73
    IOERR = 74
    TEMPFAIL = 75
    PROTOCOL = 76
    NOPERM = 77
    CONFIG = 78
    INTERRUPTED = 130
    BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of standard output went away
    TERMINATED = 143


#: What sanitize() turns into "?": C0 controls but TAB, DEL and C1 controls
#: (terminal escapes); the bidirectional controls, which reorder what a line
#: shows (CVE-2021-42574, "Trojan Source"), and the line and paragraph
#: separators, which break it; lone surrogates, which no terminal, log or
#: SQLite text can take.
_UNSAFE = dict.fromkeys(
    [
        *(c for c in range(0x20) if c != 0x09),
        *range(0x7F, 0xA0),
        0x061C,  # ARABIC LETTER MARK
        0x200E,  # LEFT-TO-RIGHT MARK
        0x200F,  # RIGHT-TO-LEFT MARK
        *range(0x202A, 0x202F),  # LRE, RLE, PDF, LRO, RLO
        *range(0x2066, 0x206A),  # LRI, RLI, FSI, PDI
        0x2028,  # LINE SEPARATOR
        0x2029,  # PARAGRAPH SEPARATOR
        *range(0xD800, 0xE000),
    ],
    "?",
)
#: What sanitize() puts where it cut a text short.
CUT = "..."


def sanitize(text: str | bytes, limit: int = 300) -> str:
    """Make server- or peer-supplied text safe to print on a terminal.

    Invalid UTF-8 becomes U+FFFD; control characters (terminal escapes among
    them), bidirectional controls and line separators become ``?``; and the
    text is cut at *limit* characters (marked ``...``), so a hostile server
    cannot paint the screen, reorder a line or start a new one.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return cut(text.translate(_UNSAFE), limit)


def cut(text: str, limit: int = 300) -> str:
    """*text* cut at *limit* characters, the cut marked ``...``."""
    return text if len(text) <= limit else text[:limit] + CUT


def one_line(exc: BaseException) -> str:
    """An error's text on one line (as a run record and a per-account line show it)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class FetchpopError(Exception):
    """Base of every error fetchpop reports; ``exit_code`` says how it ends."""

    exit_code: ExitCode = ExitCode.SOFTWARE
    #: Set on an error from a delivery that the target may have accepted all
    #: the same (a connection lost after an IMAP APPEND's literal): its
    #: intent must stay, for the next run's recovery to look.
    outcome_unknown: bool = False


class UsageError(FetchpopError):
    """The command line is wrong."""

    exit_code = ExitCode.USAGE


class ConfigError(FetchpopError):
    """The configuration file has one or more problems.

    ``problems`` holds one line per problem, each naming the file, account and key.
    """

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class NoHostError(FetchpopError):
    """The server's host name does not resolve."""

    exit_code = ExitCode.NOHOST


class UnavailableError(FetchpopError):
    """The service cannot be used: TLS failed, or an insecure action was refused."""

    exit_code = ExitCode.UNAVAILABLE


class TLSError(UnavailableError):
    """TLS could not be set up, or the server's certificate did not verify."""


class WrongServiceError(UnavailableError):
    """The port speaks another protocol, or TLS where clear text was expected
    (or the other way round): retrying will not help, the config must change."""


class InsecureError(UnavailableError):
    """Going on would be insecure (for example, STARTTLS is not offered)."""


class CapabilityError(UnavailableError):
    """The server lacks something fetchpop needs (for example UIDL)."""


class TempFailError(FetchpopError):
    """A transient failure: worth trying again later."""

    exit_code = ExitCode.TEMPFAIL


class ConnectError(TempFailError):
    """The TCP connection could not be made (refused, unreachable, timed out)."""


class ServerTimeoutError(TempFailError):
    """The server went silent for longer than the configured timeout."""


class ConnectionLostError(TempFailError):
    """The server closed or reset the connection unexpectedly."""


class PipeliningLostError(ConnectionLostError):
    """The server advertised PIPELINING but left pipelined commands unanswered.

    The session goes on from a new connection, in lock-step.
    """


class LockedError(TempFailError):
    """Another fetchpop (or mail program) holds a lock we need."""


class ServerError(FetchpopError):
    """The server answered ``-ERR``; ``code`` is the RFC 2449 response code, if any,
    and ``words`` the reply as shown to a user (``-ERR [AUTH] ...``)."""

    def __init__(self, message: str, code: str | None = None, words: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.words = message if words is None else words
        self.exit_code = _code_exit(code)


def _code_exit(code: str | None) -> ExitCode:
    # RFC 2449 section 8 and RFC 3206: [IN-USE], [LOGIN-DELAY] and [SYS/TEMP]
    # are transient; [AUTH] is a credentials problem; [SYS/PERM] is permanent.
    if code is None:
        return ExitCode.PROTOCOL
    top = code.split("/", 1)[0].upper()
    if top in ("IN-USE", "LOGIN-DELAY") or code.upper() == "SYS/TEMP":
        return ExitCode.TEMPFAIL
    if top == "AUTH":
        return ExitCode.NOPERM
    if code.upper() == "SYS/PERM":
        return ExitCode.UNAVAILABLE
    return ExitCode.PROTOCOL


class AuthError(FetchpopError):
    """Authentication failed, or no password could be had."""

    exit_code = ExitCode.NOPERM


class ProtocolError(FetchpopError):
    """The server broke the POP3 protocol (a malformed, overlong or unexpected reply)."""

    exit_code = ExitCode.PROTOCOL


class NotPOP3Error(ProtocolError):
    """The greeting is another protocol's (``service``: "ssh", "smtp", ...)."""

    def __init__(self, message: str, service: str) -> None:
        super().__init__(message)
        self.service = service


class LocalProtocolError(FetchpopError):
    """fetchpop misused its own protocol state machine: a bug."""

    exit_code = ExitCode.SOFTWARE


class DeliveryError(FetchpopError):
    """The delivery target cannot be created or written, or the MDA refused a message."""

    exit_code = ExitCode.CANTCREAT


class MessageRejectedError(DeliveryError):
    """The target took this message and refused it (an MDA read it and failed).

    Only this counts towards skipping a message; a target that cannot work at
    all (an MDA that is missing, a Maildir that cannot be written) fails the
    account and counts against no message.
    """


class SkippedError(FetchpopError):
    """Messages were skipped after failing delivery repeatedly; they stay on the server."""

    exit_code = ExitCode.DATAERR


class LocalIOError(FetchpopError):
    """A local I/O error: disk full, seen-store unwritable, and the like."""

    exit_code = ExitCode.IOERR


class StoreError(LocalIOError):
    """The seen-store cannot be opened, read or written."""


class StoreLockedError(StoreError):
    """Another process holds the seen-store's write lock for too long: try later."""

    exit_code = ExitCode.TEMPFAIL


class Interrupted(FetchpopError):
    """SIGINT or SIGTERM arrived; the run stopped at a safe point."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.exit_code = ExitCode.INTERRUPTED if signum == 2 else ExitCode.TERMINATED
