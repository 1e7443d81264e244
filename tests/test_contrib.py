"""The scheduling files in contrib/ are valid: systemd-analyze accepts the units."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    units = tmp_path / "units"
    units.mkdir()
    for unit in (CONTRIB / "systemd").iterdir():
        shutil.copy(unit, units / unit.name)
    # Instantiate the templates, as `systemctl enable fetchpop@home.timer` would.
    shutil.copy(units / "fetchpop@.service", units / "fetchpop@home.service")
    shutil.copy(units / "fetchpop@.timer", units / "fetchpop@home.timer")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    names = ["fetchpop.service", "fetchpop.timer", "fetchpop@home.service", "fetchpop@home.timer"]
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *(str(units / n) for n in names)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        timeout=60,
        check=False,
    )
    if "Failed to initialize manager" in proc.stderr:
        pytest.skip("systemd-analyze cannot run here: " + proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""


def test_crontab_line_uses_quiet_sync() -> None:
    lines = [
        ln for ln in (CONTRIB / "cron" / "crontab").read_text().splitlines() if ln and ln[0] != "#"
    ]
    assert lines == ["*/5 * * * *  fetchpop -q sync"]


@pytest.mark.parametrize("path", sorted(CONTRIB.glob("**/*.toml")), ids=lambda p: p.name)
def test_example_configs_load(path: Path, tmp_path: Path) -> None:
    from fetchpop.config import load_config

    copy = tmp_path / path.name
    copy.write_text(path.read_text())
    copy.chmod(0o600)  # examples holding a client secret must be private
    config = load_config(copy, environ={"HOME": str(tmp_path)})
    assert config.accounts
