#!/usr/bin/env python3
"""Benchmark fetchpop against mpop, fetchmail and getmail6 on a real Dovecot.

Run by hand (it is not a test and asserts nothing)::

    python3 tests/bench/bench.py [--cases A,B,C,D,E,F,G,H] [--repeat 3]
                                 [--tools fetchpop,mpop,fetchmail,getmail6]
                                 [--accounts 300] [--jobs 16]
                                 [--workdir DIR] [--source DIR] [--profile DIR]

A private Dovecot listens on loopback with implicit TLS and a throw-away CA
(tests/dovecot.py). Every tool fetches the same mailbox, leaving it on the
server, into a fresh Maildir with fresh seen-state each repetition, so every
run fetches everything; case D keeps the state so that nothing is new.

Cases: A 2,000 x 4 KB; B 40 x 2 MB; C one 100 MB message; D 10,000 messages
already seen (primed once, untimed); E the 300-message version of A and then
B, through a proxy on loopback that delays every chunk by 25 ms each way
(+50 ms round trip); F 100,000 messages already seen; G ``--accounts``
mailboxes (300) of 3 messages each in one configuration, G1 with all of them
seen (primed once), G2 fetching them all (fetchpop ``sync --jobs``
``--jobs``, 16; mpop ``-a``, fetchmail and getmail6 go one account after the
other, as they can); H a nothing-new round of ``sync --every`` with 10,000
seen, beside mpop's whole run (tests/bench/every.py, run after the others).

Figures are medians over the repetitions, with the tools interleaved: wall
time; CPU time (user + system) from ``os.wait4``, which includes the
processes the tool waited for (fetchmail's maildrop) but not Dovecot or the
proxy, which run under this process; peak RSS from GNU time (see
run_child); and Dovecot's CPU time during the run (``server CPU``, from
/proc: on 2 cores the server's share decides how far many accounts in
parallel can go). A tool whose first run of a case takes longer than ``--cap``
seconds runs that case once (marked "capped"). Tools not installed show n/a.
All four tools at ``--repeat 3`` take about 12 minutes on 2 CPUs.

Delivery Maildirs are in ``--workdir`` (default: the system temp dir, which
should be disk-backed so fsync costs what it costs; ``--workdir /dev/shm``
leaves only CPU). Dovecot's spool is on tmpfs when there is room. Every timed
run starts after ``sync(2)``, and the Maildirs are removed only when a case
ends, so that no run pays for the write-back or the freed blocks of another.

fetchpop runs from a virtual environment made for the run, which finds the
fetchpop package in the checkout (PYTHONPATH) and its dependencies where
this Python has them, through a ``.pth`` file that only lists those
directories: as a pipx or
venv installation would, it runs none of the start-up hooks of this Python's
own site-packages (``.pth`` files that import code, such as a setuptools
editable-install finder or a CA-injecting hook, cost every Python program
tens of milliseconds before its first line; they are not fetchpop's).
``--system-python`` runs it with this Python itself instead, hooks and all.
The start-up figures at the end show both.

``--source DIR`` runs the fetchpop package found in DIR instead of this
checkout, to compare a change. ``--profile DIR`` runs fetchpop once per case
under cProfile instead, stores ``DIR/<case>.prof`` and prints the top
functions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import os
import platform
import pstats
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from corpus import big_attachment_message, small_messages  # noqa: E402
from dovecot import Dovecot  # noqa: E402

HALF_RTT = 0.025  # seconds added in each direction by the proxy in case E
RUN_TIMEOUT = 900.0  # a run taking longer is killed and reported as failed
MB = 1024 * 1024
NOBODY = "nobody"


# -- the mailboxes -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    key: str
    title: str
    user: str  # Dovecot user holding the mailbox
    expect: int  # messages a run must deliver
    proxied: bool = False
    keep_state: bool = False  # D: seen-state survives between runs (primed once)
    accounts: int = 1  # G: this many mailboxes, users USER0, USER1, ...

    def users(self) -> list[str]:
        if self.accounts == 1:
            return [self.user]
        return [f"{self.user}{i}" for i in range(self.accounts)]


CASES = {
    "A": Case("A", "A: 2,000 x 4 KB", "casea", 2000),
    "B": Case("B", "B: 40 x 2 MB", "caseb", 40),
    "C": Case("C", "C: 1 x 100 MB", "casec", 1),
    "D": Case("D", "D: 10,000 seen, 0 new", "cased", 0, keep_state=True),
    "E1": Case("E1", "E: 300 x 4 KB, +50 ms RTT", "casee", 300, proxied=True),
    "E2": Case("E2", "E: 40 x 2 MB, +50 ms RTT", "caseb", 40, proxied=True),
    "F": Case("F", "F: 100,000 seen, 0 new", "casef", 0, keep_state=True),
    "G1": Case("G1", "G: 300 accounts, 3 seen each", "caseg", 0, keep_state=True, accounts=300),
    "G2": Case("G2", "G: 300 accounts, 3 new each", "caseg", 900, accounts=300),
}
#: What --cases names that stands for several.
GROUPS = {"E": ["E1", "E2"], "G": ["G1", "G2"]}
#: Run once by every tool before measuring: fills byte-code and page caches.
WARM_UP = Case("W", "warm-up", "warm", 3)


def mailbox_messages(user: str) -> Iterable[bytes]:
    """The messages of a case's mailbox, generated lazily (B and C are big)."""
    if user == "casea":
        return small_messages(2000, 4096)
    if user == "caseb":
        return small_messages(40, 2 * MB, seed=3)
    if user == "casec":
        return [big_attachment_message.__wrapped__(100 * MB)]
    if user == "cased":
        return small_messages(10000, 1024, seed=4)
    if user == "warm":
        return small_messages(3, 4096, seed=9)
    if user == "casee":
        return small_messages(300, 4096, seed=5)
    if user == "casef":
        return small_messages(100000, 512, seed=6)
    if user.startswith("caseg"):
        return small_messages(3, 4096, seed=100 + int(user[len("caseg") :]))
    raise KeyError(user)


def issue_certificate(server: Dovecot) -> None:
    """The server certificate, with a subject CN: fetchmail 6.4 rejects one without.

    Written before start(), which then keeps it (tests/dovecot.py issues one
    with subjectAltNames only).
    """
    cert = server.ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    server.root.mkdir(parents=True, exist_ok=True)
    cert.private_key_pem.write_to_path(str(server.key_file))
    server.key_file.chmod(0o600)
    server.cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    server.ca.cert_pem.write_to_path(str(server.ca_file))


def warm_up(server: Dovecot, user: str) -> None:
    """One full RETR pass, so Dovecot's indexes exist and every message is in cur/."""
    with server.pop3(user, server.users[user]) as client:
        count = client.stat()[0]
        client.uidl()
        client.list()
        sock, rfile = client.sock, client.file
        for start in range(1, count + 1, 100):
            numbers = range(start, min(start + 100, count + 1))
            sock.sendall(b"".join(b"RETR %d\r\n" % n for n in numbers))
            for _ in numbers:
                if not rfile.readline().startswith(b"+OK"):
                    raise RuntimeError("warm-up RETR failed")
                while rfile.readline(1 << 20) not in (b".\r\n", b""):
                    pass


# -- a delaying proxy ------------------------------------------------------------


class DelayProxy:
    """TCP proxy on loopback adding *delay* seconds to each direction.

    Each chunk is stamped when read and written once its time has come; reading
    goes on meanwhile, so order is kept and throughput is not serialised by the
    delay (the bandwidth-delay product sits in the queue).
    """

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.target = (host, port)
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> int:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(10)
        return self.port

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.close()
            return
        try:
            await asyncio.gather(self._pipe(creader, uwriter), self._pipe(ureader, cwriter))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (cwriter, uwriter):
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def pump() -> None:
            while True:
                data = await reader.read(256 * 1024)
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        await asyncio.gather(pump(), deliver())


# -- running one tool ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Box:
    """One account of a run: a mailbox on the server and the Maildir it goes to."""

    name: str
    user: str
    password: str
    maildir: Path


@dataclasses.dataclass(frozen=True)
class Job:
    """Where one run fetches from and delivers to."""

    host: str
    port: int
    boxes: tuple[Box, ...]
    ca_file: Path
    state: Path  # the tool's private HOME / state directory
    priming: bool = False  # an untimed run that only builds seen-state (case D)
    jobs: int = 1  # fetchpop's --jobs, for several boxes


@dataclasses.dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    maxrss_kb: int
    code: int
    delivered: int
    log: Path
    server_cpu: float = 0.0  # Dovecot's, during the run


GNU_TIME = shutil.which("time", path="/usr/bin:/bin")


def run_child(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int, int]:
    """Run *argv*; return (wall s, user+sys CPU s, peak RSS KB, exit code).

    CPU comes from os.wait4 and includes the processes the tool waited for.
    Peak RSS cannot: on Linux a child's ru_maxrss starts at the RSS of the
    process that forked it (exec records the old mm's high-water mark), which
    is this Python. So GNU time, a small C program, forks the tool and reports
    its ru_maxrss; without it the figure is -1 (shown as n/a).
    """
    rss_file = log.with_suffix(".rss")
    if GNU_TIME:
        argv = [GNU_TIME, "-q", "-f", "%M", "-o", str(rss_file), *argv]
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=env.get("HOME"),  # `python -m` would import fetchpop from the cwd first
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        timer = threading.Timer(RUN_TIMEOUT, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss = -1
    with contextlib.suppress(OSError, ValueError, IndexError):
        rss = int(rss_file.read_text().split()[-1])
        rss_file.unlink()
    return wall, usage.ru_utime + usage.ru_stime, rss, proc.returncode


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu(server: Dovecot) -> float:
    """CPU seconds Dovecot has used so far: its processes' own, and those of
    the ones that have exited (which the master has reaped: a POP3 session's
    mail process, for one). Clock ticks, so 10 ms at a time."""
    proc = server._proc
    if proc is None:
        return 0.0
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry.name}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != proc.pid:  # the process group (field 5)
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            if int(entry.name) == proc.pid:
                ticks += int(fields[13]) + int(fields[14])  # reaped children's
    return ticks / CLOCK_TICKS


def count_maildir(maildir: Path) -> int:
    return sum(len(os.listdir(maildir / sub)) for sub in ("new", "cur"))


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def base_env(home: Path) -> dict[str, str]:
    drop = ("XDG_", "FETCHPOP_", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(HOME=str(home), LC_ALL="C.UTF-8")
    return env


class Tool:
    name = ""
    ok_codes: tuple[int, ...] = (0,)

    def available(self) -> bool:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        """Write the tool's configuration into job.state; return (argv, env)."""
        raise NotImplementedError


def first_line(argv: list[str], env: dict[str, str] | None = None, match: str = "") -> str:
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            cwd=(env or {}).get("HOME"),
            check=False,
        )
    except OSError as exc:
        return f"? ({exc})"
    for line in (out.stdout + out.stderr).splitlines():
        if match in line and line.strip():
            return line.strip()
    return "?"


class Fetchpop(Tool):
    name = "fetchpop"

    def __init__(
        self,
        pycache: Path | None = None,
        python_args: tuple[str, ...] = (),
        source: Path = REPO,
        python: str = sys.executable,
    ) -> None:
        self.python = python
        self.source = source  # the directory holding the fetchpop package
        self.pycache = pycache
        self.python_args = python_args  # e.g. ("-m", "cProfile", "-o", FILE)

    def available(self) -> bool:
        return (self.source / "fetchpop" / "__main__.py").exists()

    def argv(self, *args: str) -> list[str]:
        return [self.python, *self.python_args, "-m", "fetchpop", *args]

    def env(self, home: Path) -> dict[str, str]:
        env = base_env(home)
        if self.pycache is not None:
            # An installed fetchpop has byte-code; a checkout run with
            # PYTHONDONTWRITEBYTECODE=1 would compile every module on every run.
            env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        env.update(
            PYTHONPATH=str(self.source),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_STATE_HOME=str(home / "state"),
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        )
        return env

    def version(self) -> str:
        return first_line(self.argv("--version"), self.env(Path(tempfile.gettempdir())))

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        config = write_private(
            job.state / "config.toml",
            "".join(
                f"""\
[accounts.{box.name}]
host = "{job.host}"
port = {job.port}
tls = "implicit"
user = "{box.user}"
password = "{box.password}"
ca_file = "{job.ca_file}"
deliver = "maildir:{box.maildir}"
keep = true
"""
                for box in job.boxes
            ),
        )
        jobs = ["--jobs", str(job.jobs)] if len(job.boxes) > 1 else []
        return self.argv("-q", "-c", str(config), "sync", *jobs), self.env(job.state)


class Mpop(Tool):
    name = "mpop"

    def available(self) -> bool:
        return shutil.which("mpop") is not None

    def version(self) -> str:
        return first_line(["mpop", "--version"], match="version")

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        rc = write_private(
            job.state / "mpoprc",
            f"""\
defaults
tls on
tls_starttls off
tls_trust_file {job.ca_file}
uidls_file {job.state}/uidls
keep on
only_new on
"""
            + "".join(
                f"""
account {box.name}
host {job.host}
port {job.port}
auth user
user {box.user}
password {box.password}
delivery maildir {box.maildir}
"""
                for box in job.boxes
            ),
        )
        which = ["-a"] if len(job.boxes) > 1 else [job.boxes[0].name]
        return ["mpop", "--quiet", "-C", str(rc), *which], base_env(job.state)


class Fetchmail(Tool):
    name = "fetchmail"
    ok_codes = (0, 1)  # 1: "no new mail"

    def available(self) -> bool:
        return shutil.which("fetchmail") is not None and shutil.which("maildrop") is not None

    def version(self) -> str:
        with tempfile.TemporaryDirectory() as home:
            env = base_env(Path(home))
            fm = first_line(["fetchmail", "--version"], env, match="release")
        return f"{fm}; delivery: {first_line(['maildrop', '-v'], match='maildrop')}"

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        polls = []
        for box in job.boxes:
            mailfilter = write_private(
                job.state / f"mailfilter-{box.name}", f'to "{box.maildir}/"\n'
            )
            polls.append(
                f"""\
poll {box.name} via {job.host} with protocol pop3 port {job.port} uidl
  user "{box.user}" there with password "{box.password}" is "{getpass.getuser()}" here
  options keep ssl sslcertck sslcertfile "{job.ca_file}" sslcommonname "localhost"
  mda "/usr/bin/maildrop {mailfilter}"
"""
            )
        rc = write_private(
            job.state / ".fetchmailrc",
            "set no syslog\nset no bouncemail\n" + "".join(polls),
        )
        argv = [
            "fetchmail",
            "--silent",
            "--nodetach",
            "--fetchmailrc",
            str(rc),
            "--idfile",
            str(job.state / ".fetchids"),
            "--pidfile",
            str(job.state / "fetchmail.pid"),
        ]
        env = base_env(job.state)
        env["FETCHMAILHOME"] = str(job.state)
        return argv, env


class Getmail(Tool):
    name = "getmail6"

    def available(self) -> bool:
        return shutil.which("getmail") is not None

    def version(self) -> str:
        return first_line(["getmail", "--version"], match="getmail")

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        argv = ["getmail", "--quiet", "--getmaildir", str(job.state)]
        for box in job.boxes:
            argv += ["--rcfile", str(self._rcfile(job, box))]
        if job.priming:
            argv.append("--to-oldmail-on-each-mail")
        return argv, base_env(job.state)

    def _rcfile(self, job: Job, box: Box) -> Path:
        user = ""
        if os.geteuid() == 0:
            # getmail6 refuses to deliver as root: its per-message delivery
            # child (forked in any case) switches to this user.
            user = f"user = {NOBODY}"
            for path in (box.maildir, *(box.maildir / d for d in ("cur", "new", "tmp"))):
                shutil.chown(path, NOBODY)
        return write_private(
            job.state / f"getmailrc-{box.name}",
            f"""\
[retriever]
type = SimplePOP3SSLRetriever
server = {job.host}
port = {job.port}
username = {box.user}
password = {box.password}
ca_certs = {job.ca_file}

[destination]
type = Maildir
path = {box.maildir}/
{user}

[options]
verbose = 0
read_all = false
delete = false
message_log_syslog = false
""",
        )


TOOLS: dict[str, Callable[[], Tool]] = {
    "fetchpop": Fetchpop,
    "mpop": Mpop,
    "fetchmail": Fetchmail,
    "getmail6": Getmail,
}


# -- the benchmark -------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    runs: list[Run] = dataclasses.field(default_factory=list)
    capped: bool = False
    failures: list[str] = dataclasses.field(default_factory=list)


class Bench:
    def __init__(
        self,
        server: Dovecot,
        workdir: Path,
        proxy_port: int | None,
        scratch: Path | None = None,
        jobs: int = 16,
    ) -> None:
        self.server = server
        self.jobs = jobs
        self.workdir = workdir
        # Untimed priming runs (case D) deliver here: tmpfs when there is one.
        self.scratch = scratch or workdir
        self.proxy_port = proxy_port
        self._seq = 0
        # Maildirs of timed runs, removed when a case ends: freeing 2,000 files
        # between two runs makes the next run's file creation several times
        # slower on some disks (ext4 with online discard), whoever runs next.
        self.filled: list[Path] = []

    def job(self, case: Case, state: Path, *, priming: bool = False) -> Job:
        port = self.proxy_port if case.proxied else self.server.tls_port
        assert port is not None
        self._seq += 1
        maildirs = (self.scratch if priming else self.workdir) / f"maildirs-{self._seq}"
        boxes = []
        for i, user in enumerate(case.users()):
            maildir = maildirs / user
            for sub in ("cur", "new", "tmp"):
                (maildir / sub).mkdir(parents=True)
            boxes.append(Box(f"b{i}", user, self.server.users[user], maildir))
        return Job(
            self.server.host, port, tuple(boxes), self.server.ca_file, state, priming, self.jobs
        )

    def clear(self) -> None:
        """Remove the Maildirs of the runs so far, and let the disk settle."""
        for maildir in self.filled:
            shutil.rmtree(maildir, ignore_errors=True)
        self.filled.clear()
        os.sync()

    def new_state(self) -> Path:
        self._seq += 1
        state = self.workdir / f"state-{self._seq}"
        state.mkdir(mode=0o700)
        return state

    def run(
        self, tool: Tool, case: Case, state: Path | None = None, *, priming: bool = False
    ) -> Run:
        fresh = state is None
        job = self.job(case, state or self.new_state(), priming=priming)
        argv, env = tool.command(job)
        log = self.workdir / f"log-{tool.name}-{case.key}-{self._seq}.txt"
        # Write back what earlier runs left dirty (and their deleted Maildirs):
        # otherwise the first fsync of this run pays for the previous tool's I/O.
        os.sync()
        try:
            before = server_cpu(self.server)
            wall, cpu, rss, code = run_child(argv, env, log)
            served = server_cpu(self.server) - before
            delivered = sum(count_maildir(box.maildir) for box in job.boxes)
        finally:
            maildirs = job.boxes[0].maildir.parent
            if priming:
                shutil.rmtree(maildirs, ignore_errors=True)
            else:
                self.filled.append(maildirs)
            if fresh:
                shutil.rmtree(job.state, ignore_errors=True)
        return Run(wall, cpu, rss, code, delivered, log, served)


def problem(tool: Tool, case: Case, run: Run) -> str:
    if run.code not in tool.ok_codes:
        return f"exit {run.code}"
    if run.delivered != case.expect:
        return f"delivered {run.delivered}/{case.expect}"
    return ""


def measure(
    bench: Bench, tools: list[Tool], case: Case, repeat: int, cap: float
) -> dict[str, Cell]:
    """Run every tool *repeat* times on *case*; a failed run is counted, not fatal.

    (getmail6 6.18 sometimes waits 60 s for a delivery child that has already
    exited and then gives up: it installs its SIGCHLD handler after fork.)
    """
    cells = {tool.name: Cell() for tool in tools}
    states: dict[str, Path | None] = {tool.name: None for tool in tools}
    if case.keep_state:
        for tool in tools:
            states[tool.name] = prime(bench, tool, case, cells[tool.name])
    # Interleave the tools so that drift in the machine hits them alike.
    for i in range(repeat):
        for tool in tools:
            cell = cells[tool.name]
            if cell.capped or (case.keep_state and states[tool.name] is None):
                continue
            run = bench.run(tool, case, states[tool.name])
            trouble = problem(tool, case, run)
            if trouble:
                cell.failures.append(trouble)
                tail = run.log.read_text(errors="replace")[-2000:]
                print(f"  {case.key} {tool.name}: FAILED {trouble}\n{tail}", file=sys.stderr)
                continue
            cell.runs.append(run)
            run.log.unlink(missing_ok=True)
            print(
                f"  {case.key} {tool.name} #{i + 1}: {run.wall:.2f} s wall, "
                f"{run.cpu:.2f} s CPU, {run.maxrss_kb / 1024:.0f} MB",
                file=sys.stderr,
            )
            if len(cell.runs) == 1 and run.wall > cap and repeat > 1:
                cell.capped = True
    bench.clear()
    return cells


def prime(bench: Bench, tool: Tool, case: Case, cell: Cell) -> Path | None:
    """Case D: fetch everything once (untimed, into tmpfs); returns the seen-state.

    Done when a run with that state finds nothing new. A failed attempt is
    resumed with the same state (getmail6 then saves it after each message).
    """
    state = bench.new_state()
    start = time.perf_counter()
    for _attempt in range(4):
        run = bench.run(tool, case, state, priming=True)
        if run.code in tool.ok_codes and run.delivered == 0:
            took = time.perf_counter() - start
            print(f"  {case.key} {tool.name}: primed in {took:.1f} s", file=sys.stderr)
            return state
        if run.code not in tool.ok_codes:
            tail = run.log.read_text(errors="replace")[-2000:]
            print(f"  {case.key} {tool.name}: priming run failed\n{tail}", file=sys.stderr)
    cell.failures.append("priming failed")
    return None


def median_of(runs: list[Run], attr: str) -> float:
    return statistics.median(float(getattr(r, attr)) for r in runs)


def table(results: dict[str, dict[str, Cell]], tools: list[str], installed: set[str]) -> str:
    lines = [
        "| case | tool | wall s (min-max) | CPU s | peak RSS MB | server CPU s | runs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, cells in results.items():
        for name in tools:
            title = CASES[key].title
            if name not in installed:
                lines.append(f"| {title} | {name} | n/a | n/a | n/a | n/a | - |")
                continue
            cell = cells[name]
            failed = f"{len(cell.failures)} failed: {'; '.join(sorted(set(cell.failures)))}"
            if not cell.runs:
                lines.append(f"| {title} | {name} | {failed} | | | | |")
                continue
            walls = [r.wall for r in cell.runs]
            spread = f" ({min(walls):.2f}-{max(walls):.2f})" if len(walls) > 1 else ""
            runs = f"{len(walls)}" + (" (capped)" if cell.capped else "")
            runs += f", {failed}" if cell.failures else ""
            lines.append(
                f"| {title} | {name} | {median_of(cell.runs, 'wall'):.2f}{spread} "
                f"| {median_of(cell.runs, 'cpu'):.2f} "
                f"| {median_of(cell.runs, 'maxrss_kb') / 1024:.0f} "
                f"| {median_of(cell.runs, 'server_cpu'):.2f} | {runs} |"
            )
    return "\n".join(lines)


def startup(argv: list[str], env: dict[str, str], n: int = 20) -> float:
    cwd = env.get("HOME")
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, check=True)  # warm caches
    walls = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def revision(source: Path) -> str:
    """The commit of *source* (and whether fetchpop/ differs from it)."""
    if not (source / ".git").exists():
        return "not a git checkout"
    head = first_line(["git", "-C", str(source), "log", "-1", "--format=%h %cI"])
    dirty = first_line(["git", "-C", str(source), "status", "--porcelain", "--", "fetchpop"])
    return head + (" + uncommitted changes in fetchpop/" if dirty != "?" else "")


def versions(tools: list[Tool], source: Path, started: str) -> list[str]:
    now = revision(source)
    out = [
        f"- fetchpop from {source}: {started}" + ("" if now == started else f", by the end {now}"),
        f"- Python {platform.python_version()} ({sys.executable}), {ssl.OPENSSL_VERSION}",
        f"- Dovecot {first_line(['dovecot', '--version'])}",
    ]
    out.extend(f"- {tool.name}: {tool.version()}" for tool in tools)
    return out


def profile(bench: Bench, case: Case, fetchpop: Fetchpop, outdir: Path, top: int) -> None:
    """Run fetchpop once on *case* under cProfile; print the top functions."""
    state = None
    if case.keep_state:
        state = prime(bench, fetchpop, case, Cell())
    prof = outdir / f"{case.key}.prof"
    profiled = ("-m", "cProfile", "-o", str(prof))
    tool = Fetchpop(fetchpop.pycache, profiled, fetchpop.source, fetchpop.python)
    run = bench.run(tool, case, state)
    print(
        f"\n## fetchpop profile, {case.title}: {run.wall:.2f} s wall, {run.cpu:.2f} s CPU "
        f"under cProfile (exit {run.code}, {run.delivered} delivered)\n"
    )
    for order in ("tottime", "cumulative"):
        print(f"### by {order}\n```")
        stats = pstats.Stats(str(prof), stream=sys.stdout)
        stats.strip_dirs().sort_stats(order).print_stats(top)
        print("```")


def clean_python(venv: Path) -> str:
    """A Python in a new venv that sees this Python's packages, without their hooks.

    The venv's own site-packages holds only a .pth file naming directories:
    site appends them to sys.path without reading the .pth files inside them.
    The fetchpop package comes first from PYTHONPATH (Fetchpop.env).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirs = [d for d in sys.path if d.endswith("-packages") and os.path.isdir(d)]
    Path(purelib, "fetchpop-bench.pth").write_text("\n".join(dirs) + "\n")
    return str(python)


def _tmpfs() -> str | None:
    shm = "/dev/shm"
    with contextlib.suppress(OSError):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize >= 1 << 30 and os.access(shm, os.W_OK | os.X_OK):
            return shm
    return None


def report(
    results: dict[str, dict[str, Cell]],
    names: list[str],
    tools: list[Tool],
    installed: list[Tool],
    fetchpop: Fetchpop,
    home: Path,
    started: str,
) -> None:
    env = fetchpop.env(home)
    python = startup([fetchpop.python, "-c", "pass"], env)
    module = startup(fetchpop.argv("--version"), env)
    print(f"\nMedians; {os.cpu_count()} CPUs, {platform.platform()}\n")
    print(table(results, names, {t.name for t in installed}))
    for key, cells in results.items():
        if CASES[key].accounts > 1:
            each = [
                f"{name} {median_of(cell.runs, 'cpu') / CASES[key].accounts * 1000:.1f} ms"
                for name, cell in cells.items()
                if cell.runs
            ]
            print(f"\nCPU per account, {CASES[key].title}: {', '.join(each)}")
    print(f"\nStartup, median of 20 runs, with {fetchpop.python}:")
    print(f"- `python3 -m fetchpop --version`: {module * 1000:.0f} ms")
    print(f"- `python3 -c pass`: {python * 1000:.0f} ms")
    if fetchpop.python != sys.executable:
        hooked = startup([sys.executable, "-c", "pass"], env)
        print(f"- `python3 -c pass` with {sys.executable}: {hooked * 1000:.0f} ms")
    # The console script beside this Python (not a pyenv shim on PATH).
    script = Path(sys.executable).with_name("fetchpop")
    if script.exists():
        console = startup([str(script), "--version"], env)
        print(f"- `fetchpop --version` ({script}): {console * 1000:.0f} ms")
    print()
    print("Versions:\n" + "\n".join(versions(installed, fetchpop.source, started)))
    missing = [t.name for t in tools if t not in installed]
    if missing:
        print(f"- not installed: {', '.join(missing)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases", default="A,B,C,D,E", help="A,B,C,D,E,F,G,H (E = E1,E2; G = G1,G2)"
    )
    parser.add_argument("--accounts", type=int, default=300, help="mailboxes in case G")
    parser.add_argument("--jobs", type=int, default=16, help="fetchpop's --jobs in case G")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument(
        "--cap",
        type=float,
        default=20.0,
        help="a first run slower than this many seconds is not repeated",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile fetchpop on the cases instead of benchmarking",
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--system-python",
        action="store_true",
        help="run fetchpop with this Python and its start-up hooks, not a clean venv",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        metavar="DIR",
        help="run the fetchpop package in DIR (default: this checkout), e.g. to compare a branch",
    )
    args = parser.parse_args()
    args.keys = []
    for key in args.cases.upper().split(","):
        args.keys.extend(GROUPS.get(key, [key]))
    # Case H is tests/bench/every.py (a process that keeps running), run after the others.
    args.every = "H" in args.keys
    args.keys = [k for k in args.keys if k != "H"]
    for key in ("G1", "G2"):
        case = CASES[key]
        many = f"{args.accounts:,} accounts"
        title = case.title.replace("300 accounts", many)
        expect = case.expect and 3 * args.accounts
        CASES[key] = dataclasses.replace(case, accounts=args.accounts, title=title, expect=expect)
    args.names = args.tools.split(",")
    unknown = [k for k in args.keys if k not in CASES] + [n for n in args.names if n not in TOOLS]
    if unknown:
        parser.error(f"unknown case or tool: {', '.join(unknown)}")
    return args


def main() -> int:
    args = parse_args()
    keys: list[str] = args.keys
    workdir = Path(tempfile.mkdtemp(prefix="fetchpop-bench-", dir=args.workdir))
    scratch = Path(tempfile.mkdtemp(prefix="fetchpop-bench-", dir=_tmpfs()))
    if os.geteuid() == 0:
        for path in (workdir, scratch):
            path.chmod(0o755)  # getmail6 delivers as nobody (see Getmail)
    pycache = workdir / "pycache"
    source = args.source.resolve()
    python = sys.executable if args.system_python else clean_python(workdir / "venv")
    fetchpop = Fetchpop(pycache, source=source, python=python)
    tools = [fetchpop if n == "fetchpop" else TOOLS[n]() for n in args.names]
    installed = [t for t in tools if t.available()]
    started = revision(fetchpop.source)  # others may commit while this runs
    server = Dovecot()
    proxy = None
    try:
        issue_certificate(server)
        server.start()
        users = {u for k in keys for u in CASES[k].users()} | {WARM_UP.user}
        for user in sorted(users):
            server.add_user(user, f"pw-{user}")
            server.add_messages(user, mailbox_messages(user))
            warm_up(server, user)
        if any(CASES[k].proxied for k in keys):
            proxy = DelayProxy(server.host, server.tls_port, HALF_RTT)
            proxy.start()
        bench = Bench(server, workdir, proxy.port if proxy else None, scratch, args.jobs)
        for tool in [fetchpop] if args.profile else installed:
            run = bench.run(tool, WARM_UP)
            if problem(tool, WARM_UP, run):
                print(f"warm-up of {tool.name}: {problem(tool, WARM_UP, run)}", file=sys.stderr)
                print(run.log.read_text(errors="replace")[-2000:], file=sys.stderr)
        bench.clear()

        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for key in keys:
                profile(bench, CASES[key], fetchpop, args.profile, args.top)
            return 0
        results = {}
        for key in keys:
            print(f"case {CASES[key].title}", file=sys.stderr)
            results[key] = measure(bench, installed, CASES[key], args.repeat, args.cap)
        report(results, args.names, tools, installed, fetchpop, workdir, started)
    finally:
        if proxy is not None:
            with contextlib.suppress(Exception):
                proxy.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if args.every and not args.profile:
        print(
            "\ncase H: a nothing-new round of `sync --every` (tests/bench/every.py)\n", flush=True
        )
        every = [
            sys.executable,
            str(REPO / "tests" / "bench" / "every.py"),
            "--source",
            str(source),
        ]
        subprocess.run(every, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
