"""The man pages stay in step with the code: every command, option, config key
and exit code is documented, nothing documented is made up, the pages lint
clean, and the README's test command is the one CI runs.

The pages are hand-written roff, so they are read here with a small roff
reader: comment lines dropped, font and character escapes (``\\fB``, ``\\-``,
``\\(aq`` ...) undone, and the man(7) font macros (``.B``, ``.BR``, ``.OP`` ...)
turned back into their text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from fetchpop import __version__
from fetchpop.cli import Environment, main, run
from fetchpop.config import ACCOUNT_KEYS, POP3_PORT, POP3S_PORT, find_config_path, load_config
from fetchpop.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
MAN1 = ROOT / "man" / "fetchpop.1"
MAN5 = ROOT / "man" / "fetchpop-config.5"
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

# -- a small roff reader -----------------------------------------------------------

_NAMED = {
    "-": "-", "aq": "'", "dq": '"', "ti": "~", "ha": "^", "ga": "`", "rs": "\\",
    "em": "\u2014", "en": "\u2013", "bu": "\u2022", "lq": "\u201c", "rq": "\u201d",
    ">=": "\u2265", "<=": "\u2264", "mu": "\u00d7",
}  # fmt: skip
_SIMPLE = {"-": "-", "e": "\\", "\\": "\\", "&": "", "~": " ", " ": " ", "0": " ",
           "|": "", "^": "", "c": "", ".": "."}  # fmt: skip
_ESCAPE = re.compile(r"\\(\(..|\[[^\]]*\]|f(?:\(..|\[[^\]]*\]|.)|.)")
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
_JOINED = {"B", "I", "SM", "SB", "SY", "SH", "SS"}


def unescape(text: str) -> str:
    """Text with roff escapes undone: ``\\-`` is ``-``, ``\\(aq`` is ``'``, fonts vanish."""

    def one(match: re.Match[str]) -> str:
        esc = match.group(1)
        if esc.startswith("("):
            return _NAMED.get(esc[1:], "?")
        if esc.startswith("["):
            return _NAMED.get(esc[1:-1], "?")
        if esc.startswith("f"):
            return ""
        return _SIMPLE.get(esc, esc)

    return _ESCAPE.sub(one, text)


def macro_args(rest: str) -> list[str]:
    """A macro line's arguments: words, or "quoted strings" with "" for a quote."""
    return [
        word or quoted.replace('""', '"')
        for quoted, word in re.findall(r'"((?:[^"]|"")*)"?|(\S+)', rest)
    ]


def plain(line: str) -> str:
    """The text a roff input line contributes (empty for layout-only macros)."""
    if not line.startswith((".", "'")):
        return unescape(line)
    name, _, rest = line[1:].strip().partition(" ")
    args = macro_args(rest)
    if name in _ALTERNATING:
        return unescape("".join(args))
    if name in _JOINED:
        return unescape(" ".join(args))
    if name == "OP":
        return "[" + unescape(" ".join(args)) + "]"
    return ""


def source_lines(path: Path) -> list[str]:
    """The page's lines without comment lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if not re.match(r"""^[.']\s*\\["#]""", ln)]


def sections(path: Path) -> dict[str, list[str]]:
    """Source lines per ``.SH`` section, keyed by the section's title."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in source_lines(path):
        if line.startswith(".SH"):
            current = out.setdefault(plain(line).strip(), [])
        else:
            current.append(line)
    return out


def text(lines: list[str]) -> str:
    """Plain text of *lines*, whitespace collapsed to single spaces."""
    return " ".join(" ".join(plain(ln) for ln in lines).split())


def tags(lines: list[str]) -> list[tuple[str, list[str]]]:
    """``.TP`` paragraphs: (tag text, source lines of the body up to the next ``.TP``)."""
    out: list[tuple[str, list[str]]] = []
    for i, line in enumerate(lines):
        if line.startswith(".TP") and i + 1 < len(lines):
            out.append((text([lines[i + 1]]), []))
        elif out and (i == 0 or not lines[i - 1].startswith(".TP")):
            out[-1][1].append(line)
    return out


def has_word(haystack: str, word: str) -> bool:
    """Whether *word* (an option, a key) occurs in *haystack* as a whole word."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", haystack) is not None


# -- the click command tree --------------------------------------------------------


def walk(
    cmd: click.Command, path: tuple[str, ...] = (), parent: click.Context | None = None
) -> Iterator[tuple[tuple[str, ...], click.Command, click.Context]]:
    """Every command, group and subcommand under *cmd*, with a context for each."""
    ctx = click.Context(
        cmd, info_name=path[-1] if path else "fetchpop", parent=parent, **cmd.context_settings
    )
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            if not sub.hidden:
                yield from walk(sub, (*path, name), ctx)


def options(cmd: click.Command, ctx: click.Context) -> list[click.Option]:
    """The command's visible options, --help included.

    Only click's public API is used (``get_params``, ``get_help_option``, an
    option's ``opts``): which *name* click stores an option's value under is its
    own business (the help option's was ``help`` up to click 8.4, and is
    ``_click_default_help`` since 8.5). ``test_help_output_lists_the_options_checked_here``
    checks this list against what ``fetchpop ... --help`` prints.
    """
    return [p for p in cmd.get_params(ctx) if isinstance(p, click.Option) and not p.hidden]


def option_names(option: click.Option) -> list[str]:
    return [*option.opts, *option.secondary_opts]


def is_help_option(option: click.Option, cmd: click.Command, ctx: click.Context) -> bool:
    """Whether *option* is the command's help option (``-h``/``--help``).

    Compared by its option strings, not by identity: click before 8.1.8 makes a
    new help option object on every ``get_help_option`` call.
    """
    help_option = cmd.get_help_option(ctx)
    return help_option is not None and option_names(option) == option_names(help_option)


COMMANDS = list(walk(main))
LEAVES = [(p, c, x) for p, c, x in COMMANDS if p and not isinstance(c, click.Group)]


def synopsis_blocks() -> list[str]:
    """The text of each ``.SY`` ... ``.YS`` block of fetchpop(1)'s SYNOPSIS."""
    blocks: list[list[str]] = []
    for line in sections(MAN1)["SYNOPSIS"]:
        if line.startswith(".SY"):
            blocks.append([line])
        elif blocks and not line.startswith(".YS"):
            blocks[-1].append(line)
    return [text(b) for b in blocks]


def synopsis_of(path: tuple[str, ...]) -> str:
    found = [b for b in synopsis_blocks() if f" {' '.join(path)} " in f" {b} "]
    assert found, f"fetchpop(1) SYNOPSIS has no line for `fetchpop {' '.join(path)}`"
    return found[0]


# -- fetchpop(1): commands and options ----------------------------------------------


@pytest.mark.parametrize("path", [p for p, _, _ in LEAVES], ids=" ".join)
def test_command_has_a_synopsis_with_its_options_and_arguments(path: tuple[str, ...]) -> None:
    (cmd, ctx) = next((c, x) for p, c, x in LEAVES if p == path)
    block = synopsis_of(path)
    # The help option is documented once for all commands (`fetchpop [command] -h|--help`).
    any_command = [b for b in synopsis_blocks() if has_word(b, "command")]
    for option in options(cmd, ctx):
        where = [block, *any_command] if is_help_option(option, cmd, ctx) else [block]
        assert any(has_word(b, n) for b in where for n in option_names(option)), (
            f"`fetchpop {' '.join(path)}`: {option_names(option)} missing from its SYNOPSIS line"
        )
    for argument in (p for p in cmd.params if isinstance(p, click.Argument)):
        word = (argument.name or "").lower().rstrip("s")
        assert word in block.lower(), f"`fetchpop {' '.join(path)}`: argument {word} missing"


def _help_output(path: tuple[str, ...], flag: str, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``fetchpop PATH FLAG`` prints on stdout; it must exit 0 and print nothing else."""
    with pytest.raises(SystemExit) as exited:
        run([*path, flag])
    out, err = capsys.readouterr()
    command = " ".join(("fetchpop", *path, flag))
    assert exited.value.code == 0, f"`{command}` exited {exited.value.code}"
    assert not err, err
    return out


def _options_in_help(output: str) -> set[str]:
    """The option strings in the first column of a help page's ``Options:`` list."""
    lines = output.splitlines()
    listing = lines[lines.index("Options:") + 1 :]
    listing = listing[: next((i for i, ln in enumerate(listing) if not ln.startswith(" ")), None)]
    first_columns = [m.group(1) for ln in listing if (m := re.match(r" +(-\S.*?)(?: {2,}|$)", ln))]
    return {n for col in first_columns for n in re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", col)}


@pytest.mark.parametrize(
    "path", [p for p, _, _ in COMMANDS], ids=lambda p: " ".join(("fetchpop", *p))
)
def test_help_output_lists_the_options_checked_here(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every help option string works, and the page it prints lists the options
    the tests above check (so none can be missed or made up by introspection)."""
    (cmd, ctx) = next((c, x) for p, c, x in COMMANDS if p == path)
    help_option = cmd.get_help_option(ctx)
    assert help_option is not None, f"`fetchpop {' '.join(path)}` has no help option"
    assert set(option_names(help_option)) == {"-h", "--help"}
    known = {n for o in options(cmd, ctx) for n in option_names(o)}
    for flag in option_names(help_option):
        output = _help_output(path, flag, capsys)
        assert output.startswith(" ".join(("Usage: fetchpop", *path)) + " "), output
        assert _options_in_help(output) == known, output


@pytest.mark.parametrize("path", [p for p, _, _ in COMMANDS if p], ids=" ".join)
def test_command_is_described_under_commands(path: tuple[str, ...]) -> None:
    described = [tag for tag, _ in tags(sections(MAN1)["COMMANDS"])]
    assert any(f"{tag} ".startswith(f"{' '.join(path)} ") for tag in described), (
        f"`fetchpop {' '.join(path)}` is not described under COMMANDS in fetchpop(1)"
    )


def test_global_options_are_in_the_synopsis() -> None:
    _, cmd, ctx = COMMANDS[0]
    synopsis = " ".join(synopsis_blocks())
    for option in options(cmd, ctx):
        assert any(has_word(synopsis, n) for n in option_names(option)), (
            f"global option {option_names(option)} missing from fetchpop(1) SYNOPSIS"
        )


def test_every_option_of_every_command_is_described() -> None:
    described = " ".join(tag for tag, _ in tags(sections(MAN1)["OPTIONS"]))
    for path, cmd, ctx in COMMANDS:
        for option in options(cmd, ctx):
            for name in option_names(option):
                assert has_word(described, name), (
                    f"`fetchpop {' '.join(path)}` option {name} is not described "
                    "under OPTIONS in fetchpop(1)"
                )


def test_no_documented_option_or_command_is_made_up() -> None:
    known = {n for _, c, x in COMMANDS for o in options(c, x) for n in option_names(o)}
    described = " ".join(tag for tag, _ in tags(sections(MAN1)["OPTIONS"]))
    invented = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", described)) - known
    assert not invented, f"fetchpop(1) OPTIONS documents options the code lacks: {invented}"
    commands = {p[0] for p, _, _ in COMMANDS if p}
    for tag, _ in tags(sections(MAN1)["COMMANDS"]):
        assert tag.split()[0] in commands, f"fetchpop(1) COMMANDS documents unknown {tag!r}"


# -- fetchpop(1): exit status, files, the guarantee -------------------------------------


def test_exit_status_table_lists_exactly_the_exit_codes() -> None:
    lines = sections(MAN1)["EXIT STATUS"]
    table = lines[lines.index(".TS") + 1 : lines.index(".TE")]
    rows = {int(m.group(1)) for ln in table if (m := re.match(r"(\d+)\t", ln))}
    assert rows == {int(code) for code in ExitCode}


def test_parser_errors_exit_as_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(["--no-such-option"])
    assert exited.value.code == ExitCode.USAGE
    assert "--no-such-option" in capsys.readouterr().err
    table = sections(MAN1)["EXIT STATUS"]
    assert any(ln.startswith("64\t") for ln in table)
    assert "unknown command or option" in text(table)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG paths are Linux's")
def test_files_section_shows_the_real_default_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "FETCHPOP_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = find_config_path(None, {"HOME": str(tmp_path)})
    store = Environment(environ={"HOME": str(tmp_path)}).store_path()
    files = text(sections(MAN1)["FILES"])
    for path in (config, store):
        shown = "~/" + str(path.relative_to(tmp_path))
        assert shown in files, f"{shown} is not in FILES of fetchpop(1)"
    assert "~/.config/fetchpop/config.toml" in text(source_lines(MAN5)[:40])


def test_description_opens_with_the_guarantee() -> None:
    description = sections(MAN1)["DESCRIPTION"]
    first = text(description[: description.index(".PP")])
    assert "deleted from the server only after it has been durably delivered" in first
    assert "never delivered twice" in first
    assert "at least once" in first  # what holds for an MDA


@pytest.mark.parametrize("page", [MAN1, MAN5], ids=lambda p: p.name)
def test_page_header_names_the_current_version(page: Path) -> None:
    header = next(ln for ln in source_lines(page) if ln.startswith(".TH"))
    assert f"fetchpop {__version__}" in header


# -- fetchpop-config(5): every key ------------------------------------------------------


def _key_paragraphs() -> dict[str, str]:
    out: dict[str, str] = {}
    current: str | None = None
    for tag, body in tags(sections(MAN5)["ACCOUNT KEYS"]):
        if re.fullmatch(r"[a-z_]+", tag):
            current = tag
            out[current] = text(body)
        elif current is not None:  # a nested list inside a key's paragraph
            out[current] += " " + tag + " " + text(body)
    return out


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@pytest.mark.parametrize("key", list(ACCOUNT_KEYS))
def test_config_key_is_documented_with_its_default(key: str) -> None:
    paragraphs = _key_paragraphs()
    assert key in paragraphs, f"config key {key} is not under ACCOUNT KEYS in fetchpop-config(5)"
    spec, doc = ACCOUNT_KEYS[key], paragraphs[key]
    if spec.required:
        assert "required" in doc, f"{key}: the page does not say it is required"
    if spec.default is not None:
        assert f"Default: {_toml(spec.default)}" in doc, f"{key}: default {spec.default!r}"
    if key == "port":
        assert str(POP3S_PORT) in doc and str(POP3_PORT) in doc
    assert f"{key} =" in doc, f"{key}: the page shows no example"


def test_no_documented_key_is_made_up() -> None:
    invented = set(_key_paragraphs()) - set(ACCOUNT_KEYS)
    assert not invented, f"fetchpop-config(5) documents keys the code lacks: {invented}"


def _example_file() -> str:
    lines = sections(MAN5)["EXAMPLES"]
    body = lines[lines.index(".EX") + 1 : lines.index(".EE")]
    return "\n".join(plain(ln) for ln in body) + "\n"


def test_example_file_is_complete_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = _example_file()
    for key in ACCOUNT_KEYS:
        assert re.search(rf"^(# )?{key} = ", example, re.MULTILINE), (
            f"the example file in fetchpop-config(5) does not show {key}"
        )
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "config.toml"
    path.write_text(example, encoding="utf-8")
    path.chmod(0o600)
    config = load_config(path, environ={"HOME": str(tmp_path)})
    assert config.accounts


# -- linting, and the README's test command -----------------------------------------------


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc not installed")
def test_pages_are_mandoc_lint_clean() -> None:
    result = subprocess.run(
        ["mandoc", "-Tlint", "-Wwarning", str(MAN1), str(MAN5)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr), (
        result.stdout + result.stderr
    )


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
@pytest.mark.parametrize("page", [MAN1, MAN5], ids=lambda p: p.name)
def test_pages_are_groff_warning_clean(page: Path) -> None:
    result = subprocess.run(
        ["groff", "-t", "-man", "-Tutf8", "-ww", "-z", str(page)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr, result.stderr


def _pytest_commands(lines: list[str]) -> list[str]:
    """The shell commands in *lines* that run pytest (installs excluded)."""
    out = []
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        for part in line.split("&&"):
            part = part.strip()
            if re.search(r"\bpytest\b", part) and not re.search(r"\bpip\b", part):
                out.append(part)
    return out


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = re.findall(r"```(?:sh|bash|shell|console)\n(.*?)```", README.read_text(), re.S)
    readme = _pytest_commands([ln for block in blocks for ln in block.splitlines()])
    assert len(set(readme)) == 1, f"the README should give one test command, not {readme}"
    ci = _pytest_commands(CI_RUN.read_text().splitlines())
    # CI may run more (a subset with the oldest allowed releases), but the README's
    # command verbatim, once.
    assert ci.count(readme[0]) == 1, f".ci/run runs {ci}; the README says {readme[0]!r}"
