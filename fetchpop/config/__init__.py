"""The configuration file: TOML in, frozen and validated dataclasses out.

:mod:`.model` holds what a loaded configuration is (:class:`Account`,
:class:`Config`), :mod:`.keys` the table of account keys with their
converters (``ACCOUNT_KEYS``), :mod:`.loader` finds and loads the file,
collecting every problem, and :mod:`.writer` writes account tables into one
(``fetchpop init``, ``import`` and ``demo``; imported only by them, since it
needs tempfile). The names below are the package's interface.
"""

from __future__ import annotations

from fetchpop.config.keys import (
    ACCOUNT_KEYS,
    AUTH_METHODS,
    OAUTH_AUTH_METHODS,
    OAUTH_PROVIDERS,
    TLS_MODES,
    AuthMethod,
    Converter,
    KeySpec,
    OAuthProvider,
    Tls,
    parse_size,
)
from fetchpop.config.loader import find_config_path, load_config, user_dir
from fetchpop.config.model import POP3_PORT, POP3S_PORT, Account, Config
from fetchpop.deliver import format_deliver
from fetchpop.paths import expand_path

__all__ = [
    "ACCOUNT_KEYS",
    "AUTH_METHODS",
    "OAUTH_AUTH_METHODS",
    "OAUTH_PROVIDERS",
    "POP3S_PORT",
    "POP3_PORT",
    "TLS_MODES",
    "Account",
    "AuthMethod",
    "Config",
    "Converter",
    "KeySpec",
    "OAuthProvider",
    "Tls",
    "expand_path",
    "find_config_path",
    "format_deliver",
    "load_config",
    "parse_size",
    "user_dir",
]
