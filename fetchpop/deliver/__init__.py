"""Where fetched mail goes: a Maildir, an mbox file or an MDA command.

``parse_deliver`` turns the config value (``maildir:DIR``, ``mbox:FILE``,
``mda:COMMAND``) into a :class:`DeliverySpec`, and ``format_deliver`` writes
one back; ``open_target`` makes the :class:`~fetchpop.deliver.base.Target`
that a sync session writes to. This package is the only code that writes mail.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fetchpop.deliver.base import Delivery, Target
from fetchpop.paths import expand_path, expand_user

# The targets are imported by open_target(), each only when it is used: a
# sync into a Maildir has no use for the mbox and MDA code (start-up time).
__all__ = [
    "Delivery",
    "DeliverySpec",
    "Target",
    "format_deliver",
    "open_target",
    "parse_deliver",
]

Kind = Literal["maildir", "mbox", "mda"]

_FORMS = "maildir:DIR, mbox:FILE or mda:COMMAND"


@dataclass(frozen=True)
class DeliverySpec:
    """A parsed ``deliver`` value: *path* for maildir and mbox, *command* for mda."""

    kind: Kind
    path: Path | None = None
    command: tuple[str, ...] | None = None


def _absolute_path(text: str, env: Mapping[str, str]) -> Path:
    path = expand_path(text, env)
    # A cron job's working directory is arbitrary: relative paths would wander.
    if not path.is_absolute():
        raise ValueError(f"path {text!r} must be absolute (or start with ~ or $VAR)")
    return path


def _split_command(text: str, env: Mapping[str, str]) -> tuple[str, ...]:
    import shlex  # (only an MDA needs it)

    try:
        words = shlex.split(text)
    except ValueError as exc:  # "No closing quotation" and the like
        raise ValueError(f"mda command {text!r}: {exc}") from None
    if not words or not words[0]:
        raise ValueError("mda command is empty")
    if any("\0" in word for word in words):
        raise ValueError(f"mda command {text!r} contains a NUL character")
    # No shell runs the command, so do the one expansion people rely on.
    return tuple(expand_user(word, env) for word in words)


def parse_deliver(value: str, env: Mapping[str, str] | None = None) -> DeliverySpec:
    """Parse ``maildir:DIR``, ``mbox:FILE`` or ``mda:COMMAND``.

    ``~`` and ``$VAR``/``${VAR}`` are expanded in DIR and FILE, which must then
    be absolute. COMMAND is split into words as a POSIX shell would (quotes,
    backslashes), but no shell runs it: no ``$VAR``, globs, pipes or
    redirections; a word starting with ``~`` is expanded. *env* (default
    ``os.environ``) supplies ``$HOME`` and the variables. Raises
    :class:`ValueError` with a message fit for a config error.
    """
    env = os.environ if env is None else env
    kind, colon, rest = value.partition(":")
    kind = kind.strip().lower()
    rest = rest.strip()
    if not colon or kind not in ("maildir", "mbox", "mda"):
        raise ValueError(f"{value!r} is not one of {_FORMS}")
    if not rest:
        what = "command" if kind == "mda" else "path"
        raise ValueError(f"{value!r} lacks the {what} after {kind}:")
    if kind == "mda":
        return DeliverySpec("mda", command=_split_command(rest, env))
    path = _absolute_path(rest, env)
    return DeliverySpec("maildir" if kind == "maildir" else "mbox", path=path)


def format_deliver(spec: DeliverySpec) -> str:
    """*spec* written back in the ``deliver`` key's syntax."""
    if spec.kind == "mda":
        import shlex  # (only an MDA needs it)

        return "mda:" + shlex.join(spec.command or ())
    return f"{spec.kind}:{spec.path}"


def open_target(
    spec: DeliverySpec, *, mbox_lock_timeout: float = 30.0, mda_timeout: float = 300.0
) -> Target:
    """Open the target *spec* describes.

    A Maildir is created at once (``cur``, ``new``, ``tmp``, parents, mode
    0700). An mbox is created and locked at the first ``begin()``, waiting up
    to *mbox_lock_timeout* seconds for the locks. An MDA gets *mda_timeout*
    seconds to read each chunk and to exit. Raises ``DeliveryError`` or
    ``LocalIOError`` when a Maildir cannot be created.
    """
    if spec.kind == "mda":
        if not spec.command:
            raise ValueError("an mda delivery needs a command")
        from fetchpop.deliver.mda import MdaTarget

        return MdaTarget(spec.command, timeout=mda_timeout)
    if spec.path is None:
        raise ValueError(f"a {spec.kind} delivery needs a path")
    if spec.kind == "maildir":
        from fetchpop.deliver.maildir import MaildirTarget

        return MaildirTarget(spec.path)
    from fetchpop.deliver.mbox import MboxTarget

    return MboxTarget(spec.path, lock_timeout=mbox_lock_timeout)
