"""`fetchpop demo` works with no mail server and no config: a real sync from a
local POP3 server into a Maildir it names."""

from __future__ import annotations

from pathlib import Path

from runner import Home, maildir_messages

from fetchpop.demo import sample_messages


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
