#!/usr/bin/env python3
"""Case H: the cost of a nothing-new round of ``fetchpop sync --every``.

Run by hand (it asserts nothing)::

    python3 tests/bench/every.py [--messages 10000] [--rounds 10] [--source DIR]

A private Dovecot (tests/dovecot.py, implicit TLS) holds ``--messages``
messages; fetchpop and mpop each fetch them once (untimed, to build their
seen-state). Then ``fetchpop --json sync --every 1`` runs for ``--rounds``
rounds: each round prints one JSON line, and at each line the process's CPU
time is read from ``/proc/PID/stat``, so a round's CPU is the difference
between two lines and its wall time the gap less the one-second pause. The
figures are set beside mpop's whole run for the same mailbox (start-up
included), as bench.py's case D measures it; the target is a round at most
mpop's whole run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (
    REPO,
    Box,
    Fetchpop,
    Job,
    Mpop,
    clean_python,
    issue_certificate,
    run_child,
)
from corpus import small_messages
from dovecot import Dovecot

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of *pid* so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def every_rounds(argv: list[str], env: dict[str, str], rounds: int) -> list[tuple[float, float]]:
    """(wall, CPU) of each of *rounds* rounds of ``sync --every 1`` (*argv* a sync)."""
    every = [*argv[: argv.index("sync")], "--json", "sync", "--every", "1"]
    proc = subprocess.Popen(
        every,
        env=env,
        cwd=env.get("HOME"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    marks: list[tuple[float, float]] = []
    try:
        # Each round ends with its JSON object's closing brace.
        for line in proc.stdout:
            if line == "}\n":
                marks.append((time.perf_counter(), cpu_seconds(proc.pid)))
                if len(marks) > rounds:
                    break
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    return [(t2 - t1 - 1.0, c2 - c1) for (t1, c1), (t2, c2) in itertools.pairwise(marks)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--source", type=Path, default=REPO)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fetchpop-every-"))
    dc = Dovecot()
    try:
        issue_certificate(dc)
        dc.start()
        dc.add_user("caseh", "pw-caseh")
        dc.add_messages("caseh", small_messages(args.messages, 1024, seed=4))
        fetchpop = Fetchpop(
            work / "pycache", source=args.source.resolve(), python=clean_python(work / "venv")
        )
        figures: dict[str, list[float]] = {}
        for tool in (fetchpop, Mpop()):
            if not tool.available():
                continue
            state = work / f"state-{tool.name}"
            state.mkdir(mode=0o700)
            maildir = work / f"Mail-{tool.name}"
            for sub in ("cur", "new", "tmp"):
                (maildir / sub).mkdir(parents=True)
            box = Box("bench", "caseh", dc.users["caseh"], maildir)
            job = Job(dc.host, dc.tls_port, (box,), dc.ca_file, state)
            argv, env = tool.command(job)
            for run in range(4):  # the first builds the seen-state (untimed)
                wall, cpu, _, code = run_child(argv, env, work / f"log-{tool.name}")
                if code not in tool.ok_codes:
                    print(f"{tool.name}: exit {code}", file=sys.stderr)
                    break
                if run:
                    figures.setdefault(f"{tool.name} whole run", []).append(wall)
                    figures.setdefault(f"{tool.name} whole run CPU", []).append(cpu)
            if tool is fetchpop:
                rounds = every_rounds(argv, env, args.rounds)
                figures["fetchpop --every round"] = [w for w, _ in rounds]
                figures["fetchpop --every round CPU"] = [c for _, c in rounds]
        print(f"{args.messages:,} messages seen, nothing new; medians:\n")
        print("| what | seconds |\n| --- | ---: |")
        for name, values in figures.items():
            if values:
                print(f"| {name} | {statistics.median(values):.3f} |")
    finally:
        dc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
