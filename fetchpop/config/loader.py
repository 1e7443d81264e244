"""Finding the configuration file, and loading it: TOML in, a Config out.

Strategy: parse the whole file, check every table and key against one table of
key specifications (``ACCOUNT_KEYS``), and collect every problem as one line
naming the file, the account (or ``[defaults]``) and the key. Only when there is
no problem at all is a :class:`Config` returned; otherwise a single
:class:`~fetchpop.errors.ConfigError` carries them all, as fetchpop-config(5)
promises. After loading, nothing downstream re-validates: the values are final.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

from fetchpop.config.keys import ACCOUNT_KEYS, OAUTH_AUTH_METHODS, describe, quote, suggest
from fetchpop.config.model import POP3_PORT, POP3S_PORT, Account, Config
from fetchpop.errors import ConfigError, sanitize

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")

# -- finding -----------------------------------------------------------------------


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """The configuration file to use: *explicit* (``--config``), then
    ``$FETCHPOP_CONFIG``, then ``<user config dir>/fetchpop/config.toml``."""
    if explicit:
        return Path(explicit).expanduser()
    if environ.get("FETCHPOP_CONFIG"):
        return Path(environ["FETCHPOP_CONFIG"]).expanduser()
    xdg = environ.get("XDG_CONFIG_HOME", "").strip()
    if sys.platform not in ("win32", "darwin") and xdg:
        # The environment we were given, taken at its word (as fetchpop always has).
        return Path(xdg) / "fetchpop" / "config.toml"
    return user_dir("config", environ) / "config.toml"


#: The XDG base directories fetchpop uses: kind -> (variable, default under $HOME).
_XDG = {"config": ("XDG_CONFIG_HOME", ".config"), "state": ("XDG_STATE_HOME", ".local/state")}


def user_dir(kind: Literal["config", "state"], environ: Mapping[str, str]) -> Path:
    """``<user config dir>/fetchpop`` or ``<user state dir>/fetchpop`` (platformdirs).

    On Linux that is the XDG base directory: ``$XDG_CONFIG_HOME`` (or
    ``$XDG_STATE_HOME``) when it is an absolute path, ``~/.config`` (or
    ``~/.local/state``) when it is unset, taken here from *environ* without
    importing platformdirs, whose Unix module pulls in tempfile, shutil,
    random and the compression modules (15 ms of every run). Everywhere else,
    and wherever platformdirs versions differ (a relative or padded value, no
    absolute $HOME), platformdirs decides, so the seen-store never moves.
    """
    var, default = _XDG[kind]
    if sys.platform == "linux" and not hasattr(sys, "getandroidapilevel"):
        value = environ.get(var, "")
        if os.path.isabs(value) and value == value.strip():
            return Path(value, "fetchpop")
        home = environ.get("HOME", "")
        if not value and os.path.isabs(home):
            return Path(home, default, "fetchpop")
    import platformdirs

    if kind == "config":
        return Path(platformdirs.user_config_path("fetchpop"))
    return Path(platformdirs.user_state_path("fetchpop"))


# -- reading -----------------------------------------------------------------------


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the file at *path*.

    Raises ConfigError carrying every problem found, one line each.
    *environ* (default ``os.environ``) is used for ``$VAR`` in paths.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    data, private = _read(path)
    loader = _Loader(path, env, private)
    accounts = loader.load(data)
    if loader.problems:
        raise ConfigError(loader.problems)
    return Config(path=path, accounts=accounts)


def _read(path: Path) -> tuple[dict[str, Any], bool]:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; create it (see fetchpop-config(5)) or run `fetchpop init`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {_toml_problem(str(exc))}") from None
    return data, mode & 0o077 == 0


def _toml_problem(message: str) -> str:
    # tomllib says "Invalid value (at line 3, column 7)"; put the place first.
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.DOTALL)
    if match:
        what, line, column = match.groups()
        return f"line {line}, column {column}: invalid TOML: {what}"
    return f"invalid TOML: {message}"


# -- checking ----------------------------------------------------------------------


class _Loader:
    """Walks the parsed TOML, collecting problems instead of stopping at the first."""

    def __init__(self, path: Path, environ: Mapping[str, str], private: bool) -> None:
        self.path = path
        self.environ = environ
        self.private = private
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.path}: {where}{message}")

    def key_problem(self, where: str, key: str, message: str) -> None:
        self.problem(f"{where}key {quote(key)}: ", message)

    def load(self, data: dict[str, Any]) -> dict[str, Account]:
        self.check_top_level(data)
        defaults, defaults_seen = self.defaults(data.get("defaults", {}))
        return self.accounts(data.get("accounts", {}), defaults, defaults_seen)

    def check_top_level(self, data: dict[str, Any]) -> None:
        """Everything outside [defaults] and [accounts] is a problem."""
        for key, value in data.items():
            if key in ("defaults", "accounts"):
                continue
            if key in ACCOUNT_KEYS:
                self.key_problem(
                    "", key, "not in a table; account keys go in [defaults] or [accounts.NAME]"
                )
            elif isinstance(value, dict):
                hint = suggest(key, ("defaults", "accounts"))
                self.problem("", f"[{sanitize(key)}]: unknown table{hint}")
            else:
                self.key_problem("", key, "unknown top-level key")

    def defaults(self, raw: object) -> tuple[dict[str, object], set[str]]:
        """The [defaults] table's valid values, and the names of its known keys."""
        if not isinstance(raw, dict):
            self.problem("", f'"defaults" must be a table, got {describe(raw)}')
            return {}, set()
        defaults, seen = self.table(raw, "[defaults]: ")
        self.check_conflicts(defaults, seen, "[defaults]: ")
        return defaults, seen

    def accounts(
        self, raw: object, defaults: Mapping[str, object], defaults_seen: set[str]
    ) -> dict[str, Account]:
        """The [accounts.NAME] tables that are free of problems, in the file's order."""
        if not isinstance(raw, dict):
            self.problem("", f'"accounts" must be a table, got {describe(raw)}')
            return {}
        if not raw:
            self.problem("", "no accounts defined; add an [accounts.NAME] table")
            return {}
        accounts: dict[str, Account] = {}
        for name, table in raw.items():
            account = self.account(name, table, defaults, defaults_seen)
            if account is not None:
                accounts[name] = account
        return accounts

    def table(self, raw: dict[str, Any], where: str) -> tuple[dict[str, object], set[str]]:
        """Converted values of the valid keys, and the names of all known keys present."""
        values: dict[str, object] = {}
        seen: set[str] = set()
        for key, value in raw.items():
            spec = ACCOUNT_KEYS.get(key)
            if spec is None:
                self.key_problem(where, key, "unknown key" + suggest(key, list(ACCOUNT_KEYS)))
                continue
            seen.add(key)
            if spec.secret and not self.private:
                instead = " or use password_command" if key == "password" else ""
                self.key_problem(
                    where, key, f"the file is readable by others; chmod 600 {self.path}{instead}"
                )
                continue
            try:
                values[key] = spec.convert(value, self.environ)
            except ValueError as exc:
                self.key_problem(where, key, str(exc))
        return values, seen

    def check_conflicts(self, values: Mapping[str, object], own: set[str], where: str) -> None:
        # Only complain where delete_after_days is written: an account may turn
        # keep off under a [defaults] delete_after_days without being told off.
        if "delete_after_days" in own and values.get("keep") is False:
            self.key_problem(
                where,
                "delete_after_days",
                "has no effect with keep = false (the messages are deleted at once)",
            )

    def check_oauth(
        self, values: Mapping[str, object], seen: set[str], own: set[str], where: str
    ) -> bool:
        """The OAuth2 keys' rules across keys; False when a problem was reported."""
        problems_before = len(self.problems)
        if values.get("oauth_provider") is None:
            if "oauth_provider" not in seen:  # else its bad value is already reported
                for key in sorted(k for k in own if k.startswith("oauth_")):
                    self.key_problem(where, key, "has no effect without oauth_provider")
        else:
            self.check_oauth_needs(values, seen, where)
            for key in ("password_command", "password"):
                if key in seen and (key in own or "oauth_provider" in own):
                    self.key_problem(
                        where, key, "not used with oauth_provider (the OAuth2 token is); remove one"
                    )
        return len(self.problems) == problems_before

    def check_oauth_needs(self, values: Mapping[str, object], seen: set[str], where: str) -> None:
        """What an oauth_provider needs: an OAuth2 auth method, a client ID, endpoints."""
        auth = values.get("auth", "auto")
        if auth not in OAUTH_AUTH_METHODS and ("auth" in values or "auth" not in seen):
            self.key_problem(
                where,
                "oauth_provider",
                f'needs auth = "xoauth2" or "oauthbearer" (auth is "{auth}")',
            )
        if "oauth_client_id" not in seen:
            self.key_problem(where, "oauth_client_id", "missing; oauth_provider needs it")
        if values["oauth_provider"] != "custom":
            return
        if "oauth_token_url" not in seen:
            self.key_problem(
                where, "oauth_token_url", 'missing; oauth_provider = "custom" needs it'
            )
        if "oauth_auth_url" not in seen and "oauth_device_url" not in seen:
            self.key_problem(
                where,
                "oauth_auth_url",
                'missing; oauth_provider = "custom" needs it or oauth_device_url',
            )

    def account(
        self,
        name: str,
        raw: object,
        defaults: Mapping[str, object],
        defaults_seen: set[str],
    ) -> Account | None:
        """The account, or None when it has a problem (reported)."""
        where = f"account {quote(name)}: "
        named = bool(_NAME_RE.fullmatch(name))
        if not named:
            self.problem(where, 'invalid name; use letters, digits, ".", "_" and "-"')
        if not isinstance(raw, dict):
            self.problem(where, f"must be a table, got {describe(raw)}")
            return None
        own, own_seen = self.table(raw, where)
        values = {**defaults, **own}
        self.check_conflicts(values, own_seen, where)
        seen = defaults_seen | own_seen
        oauth_ok = self.check_oauth(values, seen, own_seen, where)
        missing = [s.name for s in ACCOUNT_KEYS.values() if s.required and s.name not in seen]
        for key in missing:
            self.key_problem(where, key, "missing; it is required")
        if missing or seen - values.keys() or not oauth_ok or not named:
            return None  # Already reported.
        return _resolved(name, values)


def _resolved(name: str, values: dict[str, object]) -> Account:
    """The Account for valid *values*: defaults filled in, the port from the TLS mode."""
    for spec in ACCOUNT_KEYS.values():
        if spec.name not in values and spec.default is not None:
            values[spec.name] = spec.default
    if "port" not in values:
        values["port"] = POP3S_PORT if values["tls"] == "implicit" else POP3_PORT
    return Account(name=name, **cast(dict[str, Any], values))
