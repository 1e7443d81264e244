"""fetchpop: fetch mail from POP3 accounts, never losing it, never delivering it twice."""

__version__ = "0.1.0"
