"""``after_sync``: a command run after a sync that delivered mail.

``notmuch new``, ``mu index``, a desktop notification: it runs once the
account's sync has delivered and recorded at least one message, outside
the mailbox lock, with ``FETCHPOP_ACCOUNT``, ``FETCHPOP_NEW`` (messages) and
``FETCHPOP_BYTES`` in its environment, its output discarded (cron stays
quiet). It gets ``mda_timeout`` seconds. Its failure is one line; it never
changes what was delivered or recorded, nor the exit status.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fetchpop.config import Account
from fetchpop.errors import sanitize


def run_after_sync(
    account: Account, fetched: int, octets: int, *, environ: Mapping[str, str] | None = None
) -> str | None:
    """Run the account's ``after_sync`` command; a line saying how it failed, or None."""
    argv = account.after_sync_argv
    if argv is None:
        return None
    import subprocess  # (only an account with after_sync needs it: start-up time)

    name = sanitize(argv[0], limit=80)
    env = {
        **(os.environ if environ is None else environ),
        "FETCHPOP_ACCOUNT": account.name,
        "FETCHPOP_NEW": str(fetched),
        "FETCHPOP_BYTES": str(octets),
    }
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=account.mda_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"after_sync {name} did not finish within {account.mda_timeout:g} s"
    except OSError as exc:
        return f"after_sync {name} could not run: {exc.strerror or exc}"
    if done.returncode == 0:
        return None
    how = (
        f"killed by signal {-done.returncode}"
        if done.returncode < 0
        else f"exit {done.returncode}"
    )
    lines = [ln for ln in done.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    tail = sanitize(" / ".join(lines[-3:]), limit=300)
    return f"after_sync {name} failed ({how})" + (f": {tail}" if tail else "")
