"""`fetchpop demo` works with no mail server and no config: a real sync from a
local POP3 server into a Maildir it names."""

from __future__ import annotations

import os
from pathlib import Path

from runner import Home, maildir_messages

from fetchpop.config import load_config
from fetchpop.deliver import DeliverySpec
from fetchpop.demo import sample_messages, write_demo_config

#: A --dir that a config written by hand in an f-string would break.
AWKWARD = 'demo "quoted" dir'


def test_demo_fetches_sample_mail_once(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    where = tmp_path / "demo"
    result = home.run("demo", "--dir", str(where))
    assert result.code == 0, result
    assert f"Config: {where / 'config.toml'}" in result.stdout
    assert "demo: 4 new message(s)" in result.stderr
    assert "demo: 0 new message(s)" in result.stderr  # the second run fetched nothing
    assert "warning" not in result.stderr
    got = maildir_messages(where / "Mail")

    # The Date header is made when the server starts; compare the rest.
    def strip_date(m: bytes) -> bytes:
        return b"\n".join(ln for ln in m.split(b"\n") if not ln.startswith(b"Date: "))

    assert sorted(map(strip_date, got)) == sorted(map(strip_date, sample_messages()))
    # The user's own config and state were not touched.
    assert not home.config_path.exists() and not home.store_path.exists()


def test_demo_dir_with_a_quote_and_a_space(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    where = tmp_path / AWKWARD
    result = home.run("demo", "--dir", str(where))
    assert result.code == 0, result
    assert "demo: 4 new message(s)" in result.stderr
    assert len(maildir_messages(where / "Mail")) == len(sample_messages())


def test_demo_config_is_written_through_the_config_writer(tmp_path: Path) -> None:
    where = tmp_path / AWKWARD
    where.mkdir()
    path = where / "config.toml"
    path.write_text("# an earlier demo's config\n")
    path.chmod(0o644)
    write_demo_config(path, 1100, where / "Mail", os.environ)
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # it holds the password
    (account,) = load_config(path).accounts.values()
    assert account.name == "demo" and account.port == 1100 and account.tls == "off"
    assert account.deliver == DeliverySpec("maildir", path=where / "Mail")
    assert account.keep is False and account.password == "demo"
    assert "earlier" not in path.read_text()  # replaced, not merged
