#!/usr/bin/env python3
"""Memory and time of a big maildrop's listings: UIDL and LIST through the
protocol, the parsers and the plan. Run by hand; it asserts nothing::

    python3 tests/bench/listing_memory.py [--short] [--parse-as-read] [N ...]
                                          (default N: 100000 1000000)

Each N runs in a child process of its own, which builds the wire bytes of a
UIDL and a LIST listing of N messages (Dovecot-like UIDLs, "00001a2b3c4d5e6f"
plus the number; with --short, 8 hex digits as in the issue's 28 MB for a
million messages), feeds them to a POP3Protocol in 64 KiB reads (as the
client does), parses the listings (parse_uidls, parse_sizes), merges them
(maildrop) and plans against an empty seen-store (make_plan). It
prints the wire size, the peak RSS (``ru_maxrss``) and the current one
(/proc/self/statm) after each stage, and the seconds each took. Stages
after a refusal (a listing over MAX_MESSAGES, or over the protocol's
MAX_LISTING_SIZE) are not run; the refusal line is printed instead.

--parse-as-read parses each listing as soon as the protocol has it, so that
UIDL's lines are gone before LIST's are read: what a client that parses in
that order would cost (``Client.maildrop`` now reads all three listings
first).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def child(n: int, short: bool, eager: bool) -> None:
    from fetchpop.config import Account
    from fetchpop.config.model import DeliverySpec
    from fetchpop.errors import FetchpopError
    from fetchpop.pop3.listings import parse_sizes, parse_uidls
    from fetchpop.pop3.protocol import Listing, POP3Protocol
    from fetchpop.sync.plan import Known, maildrop, make_plan

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def now_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def stage(name: str, started: float) -> float:
        now = time.perf_counter()
        print(
            f"  {name:<24} peak RSS {rss_mib():7.1f} MiB  now {now_mib():7.1f} MiB"
            f"  {now - started:6.2f} s",
            flush=True,
        )
        return now

    t = time.perf_counter()
    print(f"N = {n:,}: start                  peak RSS {rss_mib():7.1f} MiB")
    uidl_wire, list_wire = bytearray(), bytearray()
    for at in range(1, n + 1, 10000):
        block = range(at, min(at + 10000, n + 1))
        uid = b"%d %08x\r\n" if short else b"%d 00001a2b3c4d5e6f%08d\r\n"
        uidl_wire += b"".join([uid % (i, i) for i in block])
        list_wire += b"".join([b"%d %d\r\n" % (i, 2000 + i % 50000) for i in block])
    wire = len(uidl_wire) + len(list_wire)
    print(f"  wire: UIDL + LIST = {wire / 2**20:.1f} MiB")
    t = stage("wire bytes built", t)

    proto = POP3Protocol()
    proto.receive_data(b"+OK ready\r\n")
    proto.next_event()
    proto.send("USER", "a")
    proto.send("PASS", "b")
    proto.receive_data(b"+OK\r\n+OK\r\n")
    proto.next_event()
    proto.next_event()
    listings: list[list[bytes]] = []
    parsed: list[object] = []
    try:
        for command, data in (("UIDL", uidl_wire), ("LIST", list_wire)):
            proto.send(command)
            proto.receive_data(b"+OK\r\n")
            event = proto.next_event()
            for at in range(0, len(data), 65536):
                proto.receive_data(bytes(data[at : at + 65536]))
                event = proto.next_event()
            proto.receive_data(b".\r\n")
            event = proto.next_event()
            assert isinstance(event, Listing), event
            if eager:  # parsed as soon as read: its lines are gone before LIST's come
                parsed.append((parse_uidls if command == "UIDL" else parse_sizes)(event.lines))
            else:
                listings.append(event.lines)
            del event
    except FetchpopError as exc:
        stage("protocol", t)
        print(f"  refused: {exc}")
        return
    del uidl_wire, list_wire, data
    if eager:
        t = stage("protocol + parse, eagerly", t)
        listing, sizes = parsed  # type: ignore[assignment]
        del parsed
    else:
        t = stage("protocol: lines", t)
        try:
            listing = parse_uidls(listings[0])
            sizes = parse_sizes(listings[1])
        except FetchpopError as exc:
            print(f"  refused: {exc}")
            return
        del listings
        t = stage("parse_uidls + parse_sizes", t)
    messages = maildrop(listing, sizes)  # type: ignore[arg-type]
    del listing, sizes
    t = stage("maildrop", t)
    account = Account(
        name="bench",
        host="pop.example.org",
        user="alice",
        port=995,
        tls="implicit",
        deliver=DeliverySpec("maildir", Path("/nonexistent")),
    )
    plan = make_plan(dataclasses.replace(account, keep=True), messages, Known(), now=0.0)
    t = stage("make_plan", t)
    print(f"  plan: {len(plan.fetch):,} to fetch")


def main() -> None:
    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("--")]
    if "--child" in flags:
        child(int(args[1]), "--short" in flags, "--parse-as-read" in flags)
        return
    counts = [int(a) for a in args if not a.startswith("--")] or [100_000, 1_000_000]
    for n in counts:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        command = [sys.executable, __file__, "--child", str(n), *flags]
        subprocess.run(command, check=True, env=env)


if __name__ == "__main__":
    main()
