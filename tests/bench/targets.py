#!/usr/bin/env python3
"""Peak memory and time of one 100 MB message through each delivery target.

Run by hand (it asserts nothing; as root, for the private Postfix)::

    python3 tests/bench/targets.py [--size MB] [--repeat 3] [--source DIR]

A private Dovecot (POP3, LMTP, IMAP; tests/dovecot.py) serves one message of
``--size`` MB (an attachment, as case C of bench.py) from a POP3 mailbox;
``fetchpop sync`` (keep = true, fresh state each run) delivers it to a
Maildir (the reference), to Dovecot's LMTP over its unix socket, to a
private Postfix over SMTP (tests/postfix.py; skipped without it) and to
Dovecot's IMAP with APPEND over STARTTLS. Each target's median wall time,
CPU time and peak RSS (GNU time, as bench.py measures it) are printed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import REPO, Fetchpop, base_env, clean_python, issue_certificate, run_child
from corpus import big_attachment_message
from dovecot import Dovecot


def account(dc: Dovecot, deliver: str, extra: str = "") -> str:
    return f"""\
[accounts.bench]
host = "localhost"
port = {dc.tls_port}
tls = "implicit"
user = "source"
password = "{dc.users["source"]}"
ca_file = "{dc.ca_file}"
deliver = "{deliver}"
keep = true
{extra}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100, help="the message's size in MB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--source", type=Path, default=REPO)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fetchpop-targets-"))
    dc = Dovecot(lmtp=True, imap=True)
    postfix = None
    try:
        issue_certificate(dc)
        dc.start()
        dc.add_user("source", "pw-source")
        dc.add_user("inbox", "pw-inbox")
        dc.add_messages("source", [big_attachment_message.__wrapped__(args.size * 2**20)])
        targets = {
            "maildir": account(dc, f"maildir:{work}/Mail"),
            "lmtp (unix socket)": account(dc, f"lmtp:{dc.lmtp_socket}", 'recipient = "inbox"'),
            "imap (STARTTLS)": account(
                dc,
                f"imap://inbox@localhost:{dc.imap_port}/INBOX",
                f'imap_tls = "starttls"\nimap_ca_file = "{dc.ca_file}"\n'
                f'imap_password = "{dc.users["inbox"]}"',
            ),
        }
        try:
            from postfix import Postfix, PostfixError

            postfix = Postfix(mailboxes=("inbox",)).start()
            targets["smtp (Postfix)"] = account(
                dc, f"smtp:127.0.0.1:{postfix.port}", 'recipient = "inbox@fetchpop.test"'
            )
        except (ImportError, PostfixError, OSError) as exc:
            print(f"smtp: skipped ({exc})", file=sys.stderr)
        fetchpop = Fetchpop(work / "pycache", source=args.source.resolve(),
                            python=clean_python(work / "venv"))  # fmt: skip
        print(f"One {args.size} MB message, median of {args.repeat}:\n")
        print("| target | wall s | CPU s | peak RSS MB |\n| --- | ---: | ---: | ---: |")
        for name, config in targets.items():
            runs = []
            for i in range(args.repeat):
                state = work / f"state-{name.split()[0]}-{i}"
                state.mkdir(mode=0o700)
                path = state / "config.toml"
                path.write_text(config)
                path.chmod(0o600)
                env = {**base_env(state), **fetchpop.env(state)}
                argv = fetchpop.argv("-q", "-c", str(path), "sync")
                wall, cpu, rss, code = run_child(argv, env, state / "log")
                if code != 0:
                    print(f"{name}: exit {code}\n" + (state / "log").read_text()[-2000:])
                    break
                runs.append((wall, cpu, rss))
                shutil.rmtree(work / "Mail", ignore_errors=True)
            if runs:
                wall, cpu, rss = (statistics.median(r[k] for r in runs) for k in range(3))
                print(f"| {name} | {wall:.2f} | {cpu:.2f} | {rss / 1024:.0f} |")
    finally:
        if postfix is not None:
            postfix.stop()
        dc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
