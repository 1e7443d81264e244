"""The one rule for ``~`` and ``$VAR`` in the paths of the configuration file.

Both the ``deliver`` key (its DIR, FILE and the ``~`` words of an mda
COMMAND) and ``ca_file`` expand with these functions, as fetchpop-config(5),
PATHS, describes. This module imports nothing of fetchpop's, so that
:mod:`fetchpop.deliver` and :mod:`fetchpop.config` (which imports deliver)
can both use it.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from pathlib import Path

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand_user(text: str, environ: Mapping[str, str]) -> str:
    """*text* with a leading ``~`` or ``~user`` replaced by that home directory.

    ``~`` alone or before a ``/`` is ``$HOME`` taken from *environ* (a trailing
    ``/`` of HOME dropped); HOME unset or empty is an error (ValueError), not
    the password database's entry and not the empty string. ``~user`` is that
    user's home directory from the password database, and stays as it is when
    there is no such user. A ``~`` anywhere else is an ordinary character.
    """
    if not text.startswith("~"):
        return text
    if text != "~" and not text.startswith("~/"):
        return os.path.expanduser(text)  # ~user, from the password database
    home = environ.get("HOME")
    if not home:
        state = "not set" if home is None else "empty"
        raise ValueError(f"cannot expand ~ in {text!r}: HOME is {state}")
    return home if text == "~" else home.rstrip("/") + text[1:]


def expand_path(text: str, environ: Mapping[str, str]) -> Path:
    """*text* with its leading ``~`` expanded, then every ``$VAR`` and ``${VAR}``.

    The ``~`` is the one of *text* as written (:func:`expand_user`): as in a
    shell, a variable's value is not expanded again, so ``$D/x`` with
    ``D=~/certs`` names a directory called ``~``. A variable is looked up in
    *environ*; one that is not set is an error (ValueError) rather than an
    empty string or a literal ``$VAR`` in a path; a set but empty one is
    empty. A NUL character in the result is an error. A relative result is
    returned relative, that is relative to the working directory: callers
    that cannot work with one (``deliver``) refuse it.
    """

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        value = environ.get(name)
        if value is None:
            raise ValueError(f"environment variable ${name} in {text!r} is not set")
        return value

    expanded = _VARIABLE.sub(variable, expand_user(text, environ))
    if "\0" in expanded:
        raise ValueError(f"path {text!r} contains a NUL character")
    return Path(expanded)


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """Create *path* and any missing parents, each with mode 0700.

    ``os.makedirs`` (and ``Path.mkdir(parents=True)``) applies its mode to
    the last directory only, and the umask to the others: under ``umask
    000`` a new ``~/.local/state`` would be writable by anyone, who could then
    swap the seen-store or a lock file. The seen-store's, the locks', the
    config's and the mail folders' directories are made with this.
    """
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            # Either a race with another creator (fine) or a file in the way.
            if not os.path.isdir(directory):
                raise NotADirectoryError(
                    errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory
                ) from None
