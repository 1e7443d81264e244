"""The command line: the only package that imports click, prints, or picks an
exit status. Pure glue: commands turn arguments into calls of the library
(fetchpop.sync, fetchpop.config, ...) and results into lines, JSON and exit
statuses; every exception becomes an exit status in one place
(:func:`fetchpop.cli.app.failure`).

* :mod:`~fetchpop.cli.app`: the group, global options, the funnel, the entry point;
* :mod:`~fetchpop.cli.env`: the Environment (streams, tty flags, clock, dirs)
  and signal handling;
* :mod:`~fetchpop.cli.output`: the progress bar, sizes, transcript lines;
* :mod:`~fetchpop.cli.syncing`: ``sync``, ``check``, ``status``;
* :mod:`~fetchpop.cli.accounts`: ``accounts``, ``password``, ``seen``,
  ``oauth``, ``serverinfo``;
* :mod:`~fetchpop.cli.setup`: ``init``, ``demo``, ``import``.

Heavy modules are imported inside the commands so ``fetchpop --version``
stays fast.
"""

from __future__ import annotations

from fetchpop.cli import accounts, setup, syncing
from fetchpop.cli.app import entry, main, run
from fetchpop.cli.env import Environment

__all__ = ["Environment", "accounts", "entry", "main", "run", "setup", "syncing"]
