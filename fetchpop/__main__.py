"""Allow ``python -m fetchpop``."""

from fetchpop.cli import run

run()
