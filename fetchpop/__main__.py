"""Allow ``python -m fetchpop``."""

from fetchpop.cli import main

main()
