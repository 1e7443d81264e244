"""Allow ``python -m fetchpop``."""

from fetchpop.cli import entry

entry()
