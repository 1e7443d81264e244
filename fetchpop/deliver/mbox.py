"""Delivery into an mbox file, in the mboxrd format.

Strategy: each message is appended as a ``From SENDER DATE`` line, the message
with every line matching ``^>*From `` given one more ``>`` (mboxrd, so the
quoting can be undone exactly: :func:`split_mboxrd`), and a blank line. A
message without a final newline gets one.

Locking follows Debian Policy 11.6: an fcntl lock and a ``FILE.lock`` dot-lock,
both taken without blocking and retried (so neither order can deadlock) until
``lock_timeout`` runs out. The locks are taken at the first ``begin()`` -- a
run that finds no mail never touches the mbox -- and held until ``close()``.
As liblockfile does, a dot-lock is stale (and removed) when the process whose
pid it holds is gone -- a killed run leaves one behind -- or when it has not
been touched for 5 minutes.

The intent, journalled durably for a whole batch before its first byte is
written (``reserve``), is the file's length before the batch, with the dot-lock's
inode and pid; on any failure a message is truncated back, so a reader never
sees half a message. Crash recovery (``delivered``, ``confirm``, ``damaged``)
walks the batch's messages from that offset in order, and removes bytes only
when everything from there to the end of the file is the start of fetchpop's
own copy of the message: mail another program appended after the crash is
never cut out, and a damaged region is reported, not removed. A dot-lock the
journal proves to be a dead run's own (its inode and pid recorded) is removed
at once, even after a power cut, when the pid may belong to another process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from fetchpop.deliver._oserror import fsync_dir, os_error
from fetchpop.errors import DeliveryError, FetchpopError, LocalProtocolError, LockedError
from fetchpop.paths import make_private_dirs as make_dirs

_QUOTE = re.compile(rb"^(>*From )", re.MULTILINE)
_UNQUOTE = re.compile(rb"^>(>*From )", re.MULTILINE)
_SEPARATOR = re.compile(rb"^From ", re.MULTILINE)
_FROM = b"From "

_HEADER_LIMIT = 64 * 1024  # header bytes held back while looking for Return-Path
_WRITE_BUFFER = 64 * 1024
_STALE_LOCK_AGE = 300.0  # liblockfile: a dot-lock untouched for 5 minutes is stale
_TOUCH_INTERVAL = 60.0  # so that others do not think our own dot-lock stale


class _Quoter:
    """mboxrd quoting of a byte stream split anywhere: ``^>*From `` gains a ``>``.

    Prepending a ``>`` to a run of ``>`` gives the same bytes as inserting it
    just before ``From``, so a line's leading ``>`` can be passed on at once and
    only a partial ``From`` (at most four bytes) is ever held back.
    """

    def __init__(self) -> None:
        self._at_start = True  # everything passed on of this line so far is ">"
        self._held = b""  # a proper prefix of b"From " at such a line start

    def feed(self, chunk: bytes) -> bytes:
        """Quote *chunk*; returns the bytes that can be written now."""
        data = self._held + chunk
        self._held = b""
        out: list[bytes] = []
        if not self._at_start:
            newline = data.find(b"\n")
            if newline < 0:
                return data
            out.append(data[: newline + 1])
            data = data[newline + 1 :]
            self._at_start = True
        cut = data.rfind(b"\n") + 1
        out.append(_QUOTE.sub(rb">\1", data[:cut]))
        tail = data[cut:]
        rest = tail.lstrip(b">")
        run = len(tail) - len(rest)
        if rest.startswith(_FROM):
            out.append(b">" + tail)
            self._at_start = False
        elif _FROM.startswith(rest):
            out.append(tail[:run])
            self._held = rest
        else:
            out.append(tail)
            self._at_start = False
        return b"".join(out)

    def end(self) -> bytes:
        """The bytes still held back (a partial ``From`` at the very end)."""
        held, self._held = self._held, b""
        return held


def _sender(header: bytes) -> bytes:
    """The address in the first Return-Path header, or ``MAILER-DAEMON``."""
    lines = header.split(b"\n")
    for i, line in enumerate(lines):
        if not line.lower().startswith(b"return-path:"):
            continue
        value = line[len(b"return-path:") :]
        for folded in lines[i + 1 :]:  # RFC 5322 section 2.2.3 folding
            if folded[:1] not in (b" ", b"\t"):
                break
            value += folded
        if b"<" in value:
            value = value.split(b"<", 1)[1].split(b">", 1)[0]
        address = value.strip()
        # The separator must stay one line of one word; anything odd is dropped.
        if 0 < len(address) <= 256 and all(0x21 <= c <= 0x7E for c in address):
            return address
        break
    return b"MAILER-DAEMON"


def split_mboxrd(data: bytes) -> list[bytes]:
    """Split an mboxrd file into its messages, undoing what delivery added.

    Drops each ``From `` separator line and the blank line that ends each
    message, and removes one ``>`` from lines matching ``^>+From ``. Bytes
    before the first separator are ignored. For a message *m* delivered by
    :class:`MboxTarget` the result is *m*, with ``\\n`` appended if *m* did not
    end with one (so ``b""`` comes back as ``b"\\n"``).
    """
    starts = [match.start() for match in _SEPARATOR.finditer(data)]
    messages: list[bytes] = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(data)
        newline = data.find(b"\n", start, end)
        body = data[newline + 1 : end] if newline >= 0 else b""
        if body.endswith(b"\n"):
            body = body[:-1]
        messages.append(_UNQUOTE.sub(rb"\1", body))
    return messages


class MboxDelivery:
    """One message being appended; see :class:`fetchpop.deliver.base.Delivery`."""

    def __init__(self, target: MboxTarget, fd: int, offset: int, prefix: bytes) -> None:
        self.intent = str(offset)
        self._target = target
        self._fd = fd
        self._offset = offset
        # Newlines that make the previous message end in a blank line.
        self._prefix = prefix
        self._date = time.asctime(time.gmtime()).encode()
        self._head: bytearray | None = bytearray()  # None once the separator is out
        self._quoter = _Quoter()
        self._buffer = bytearray()
        self._last = b""
        self._state = "open"  # -> "finished" | "aborted"

    def write(self, chunk: bytes) -> None:
        """Append *chunk*; on failure the file is truncated back and the error raised."""
        self._check_open()
        if not chunk:
            return
        self._last = chunk[-1:]
        if self._head is None:
            self._out(self._quoter.feed(chunk))
            return
        search_from = max(0, len(self._head) - 1)
        self._head += chunk
        if (
            self._head[:1] == b"\n"
            or self._head.find(b"\n\n", search_from) >= 0
            or len(self._head) >= _HEADER_LIMIT
        ):
            self._start_body()

    def _start_body(self) -> None:
        head = bytes(self._head or b"")
        self._head = None
        end = head.find(b"\n\n")
        header = head[: end + 1] if end >= 0 else head
        if head.startswith(b"\n"):
            header = b""  # no header block at all
        sender = _sender(header)
        self._out(self._prefix + b"From " + sender + b" " + self._date + b"\n")
        self._out(self._quoter.feed(head))

    def finish(self) -> None:
        """Write the end of the message and fsync the file."""
        self._check_open()
        if self._head is not None:
            self._start_body()
        self._out(self._quoter.end() + (b"\n" if self._last != b"\n" else b"") + b"\n")
        self._drain()
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._fail(exc)
        self._state = "finished"
        self._target.done(self, finished=True)

    def abort(self) -> None:
        """Truncate the file back to its length before this message."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._buffer.clear()
        try:
            os.ftruncate(self._fd, self._offset)
            os.fsync(self._fd)
        except OSError as exc:
            raise os_error(
                exc, f"cannot truncate mbox {self._target.path} back to {self._offset} bytes"
            ) from exc
        finally:
            self._target.done(self, finished=False)

    def _check_open(self) -> None:
        if self._state != "open":
            raise LocalProtocolError(f"mbox delivery used after being {self._state}")

    def _out(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= _WRITE_BUFFER:
            self._drain()

    def _drain(self) -> None:
        view = memoryview(bytes(self._buffer))
        self._buffer.clear()
        try:
            while view:
                view = view[os.write(self._fd, view) :]  # short only when the disk fills
        except OSError as exc:
            self._fail(exc)
        self._target.touch_lock()

    def _fail(self, exc: OSError) -> None:
        error = self._target.error(exc)
        self.abort()
        raise error from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unsafe(info: os.stat_result) -> str | None:
    """Why an opened mbox must not be written to, or None."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    euid = os.geteuid()
    if euid != 0 and info.st_uid != euid:
        return f"owned by uid {info.st_uid}, not by you"
    if info.st_nlink > 1:
        return f"it has {info.st_nlink} hard links"
    return None


class MboxTarget:
    """An mbox file (created with mode 0600, parents 0700, when missing)."""

    def __init__(self, path: Path, *, lock_timeout: float = 30.0) -> None:
        self.path = path
        self.lock_path = Path(f"{path}.lock")
        self._lock_timeout = lock_timeout
        self._fd: int | None = None
        self._dotlocked = False
        self._touched = 0.0
        self._active: MboxDelivery | None = None
        self._unflushed = False
        self._lock_proof = ""  # "INODE:PID" of the dot-lock we hold, for the journal
        # Crash recovery: dot-locks the journal proves a dead run's own, and
        # per batch offset, how far its messages were found (see confirm).
        self._own_locks: set[str] = set()
        self._found: dict[int, int] = {}
        # batch offset -> (where its next message was looked for, the furthest
        # any of its messages matched there before a byte differed)
        self._differs: dict[int, tuple[int, int]] = {}

    def error(self, exc: OSError) -> FetchpopError:
        """The fetchpop error for *exc* met while writing to this mbox."""
        return os_error(exc, f"cannot write to mbox {self.path}")

    def reserve(self, count: int) -> list[str]:
        """Lock the file; the intent of each of the next *count* messages is
        the file's length now (they follow each other from there, in order)
        and the dot-lock's inode and pid (``OFFSET lock=INODE:PID``)."""
        size = self._size(self._locked_fd())
        intent = f"{size} lock={self._lock_proof}" if self._dotlocked else str(size)
        return [intent] * count

    def _size(self, fd: int) -> int:
        try:
            return os.fstat(fd).st_size
        except OSError as exc:
            raise self.error(exc) from exc

    def begin(self, uidl: str, intent: str | None = None) -> MboxDelivery:
        """Lock the file (the first time); the message goes at its end."""
        if self._active is not None:
            raise LocalProtocolError("an mbox takes one message at a time")
        fd = self._locked_fd()
        size = self._size(fd)
        try:
            tail = os.pread(fd, 2, max(0, size - 2))
        except OSError as exc:
            raise self.error(exc) from exc
        # mboxrd readers want a blank line before each "From " line.
        if size == 0 or tail == b"\n\n":
            prefix = b""
        elif tail.endswith(b"\n"):
            prefix = b"\n"
        else:
            prefix = b"\n\n"
        self._active = MboxDelivery(self, fd, size, prefix)
        return self._active

    def done(self, delivery: MboxDelivery, *, finished: bool) -> None:
        """Called by a delivery when it is finished or aborted."""
        if self._active is delivery:
            self._active = None
        self._unflushed = self._unflushed or finished

    def flush(self) -> None:
        """Messages are fsynced by ``finish()``; this fsyncs the directory entry."""
        if not self._unflushed:
            return
        # Needed once when the file was created; cheap enough to do always.
        try:
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise self.error(exc) from exc
        self._unflushed = False

    def close(self) -> None:
        """Abort an unfinished delivery and release both locks."""
        try:
            if self._active is not None:
                self._active.abort()
        finally:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                self._release(fd)

    def delivered(self, intent: str) -> bool | None:
        """``False`` when the file ends at or before where the message would be.

        Otherwise ``None``: the bytes there must be compared with the
        server's copy (``confirm``). The intents of one batch must be asked
        in the order they were journalled. A dot-lock the intent names is
        remembered as a dead run's own (removed at once when met).
        """
        offset, proof = _parse_intent(intent)
        if offset is None:
            return None
        if proof:
            self._own_locks.add(proof)
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self.error(exc) from exc
        return False if size <= self._found.get(offset, offset) else None

    def confirm(self, intent: str, message: Iterable[bytes]) -> bool:
        """Crash recovery: is *message* (the server's copy) the next one of its batch?

        Compares, streaming, the file from where the batch's last message was
        found (at first the intent's offset) with the quoted message. True
        when it is there whole. When everything from there to the end of the
        file is the start of this message (a run killed while writing it),
        that tail is removed; anything else is left as it is (``damaged``
        reports it): False.
        """
        offset, _ = _parse_intent(intent)
        if offset is None:
            return False
        fd = self._locked_fd()
        start = self._found.get(offset, offset)
        try:
            reader = _Reader(fd, start)
            reader.skip_separator()
            quoter = _Quoter()
            last = b""
            for chunk in message:
                if chunk:
                    last = chunk[-1:]
                reader.expect(quoter.feed(chunk))
            reader.expect(quoter.end() + (b"\n" if last != b"\n" else b"") + b"\n")
            if not reader.differs and not reader.hit_eof and reader.at_boundary():
                self._found[offset] = reader.position
                self._differs.pop(offset, None)
                return True
            if reader.differs or not reader.hit_eof:
                _, furthest = self._differs.get(offset, (start, start))
                self._differs[offset] = (start, max(furthest, reader.position))
                return False
            # Our own partial message is all that follows: remove it.
            os.ftruncate(fd, start)
            os.fsync(fd)
            self._differs.pop(offset, None)
        except OSError as exc:
            raise self.error(exc) from exc
        return False

    def damaged(self) -> list[str]:
        """After recovery: the start of a message an interrupted run did not
        finish, with another program's mail after it, left in the file.

        Where a message was looked for and not found, the bytes up to the
        next separator are that: when they all matched the start of one of
        the batch's messages (the first difference is at the separator or
        beyond). When a byte differs earlier, the message there is not
        fetchpop's at all (mail appended after the crash): nothing to say.
        """
        lines = []
        differs, self._differs = self._differs, {}
        if self._fd is None:
            return []
        for start, furthest in sorted(differs.values()):
            try:
                end = _next_separator(self._fd, start)
            except OSError as exc:
                raise self.error(exc) from exc
            if start < end <= furthest:
                lines.append(
                    f"mbox {self.path}: left {end - start} bytes at offset {start} as they "
                    "are: the start of a message an interrupted run did not finish, with "
                    "another program's mail after it; the message is delivered again at "
                    "the end"
                )
        return lines

    def touch_lock(self) -> None:
        """Refresh the dot-lock's time now and then during a long run."""
        if self._dotlocked and time.monotonic() - self._touched >= _TOUCH_INTERVAL:
            self._touched = time.monotonic()
            try:
                os.utime(self.lock_path)
            except OSError as exc:
                raise os_error(exc, f"cannot refresh lock file {self.lock_path}") from exc

    def _locked_fd(self) -> int:
        if self._fd is not None:
            return self._fd
        try:
            make_dirs(str(self.path.parent))
        except OSError as exc:
            raise os_error(exc, f"cannot create the directory of mbox {self.path}") from exc
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.02
        while True:
            fd = self._open()
            try:
                # A file replaced while we waited is not the one to write to.
                locked = self._try_lock(fd) and self._same_file(fd)
            except BaseException:
                self._release(fd)
                raise
            if locked:
                self._fd = fd
                return fd
            self._release(fd)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockedError(f"mbox {self.path} is locked by another program")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)

    def _open(self) -> int:
        """The mbox, opened to append, if it is safe to write to.

        As procmail and dovecot-lda refuse them: a symbolic link in a
        directory others can write (in a shared spool another member of the
        group could point ``spool/alice`` at ``~alice/.ssh/authorized_keys``),
        anything but a regular file, a file owned by someone else (unless
        fetchpop runs as root, delivering for others), or one with more than
        one hard link.
        """
        self._check_link()
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise os_error(exc, f"cannot open mbox {self.path}") from exc
        try:
            info = os.fstat(fd)
            problem = _unsafe(info)
            if problem is None:
                os.set_blocking(fd, True)
        except OSError as exc:
            os.close(fd)
            raise self.error(exc) from exc
        if problem is not None:
            os.close(fd)
            raise DeliveryError(f"cannot write to mbox {self.path}: {problem}; refusing it")
        return fd

    def _check_link(self) -> None:
        try:
            if not self.path.is_symlink():
                return
            directory = os.stat(self.path.parent)
        except OSError as exc:
            raise self.error(exc) from exc
        if directory.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise DeliveryError(
                f"cannot write to mbox {self.path}: a symbolic link in a directory others "
                "can write to; refusing it"
            )

    def _try_lock(self, fd: int) -> bool:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise os_error(exc, f"cannot lock mbox {self.path}") from exc
        if self._dotlock():
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False

    def _dotlock(self) -> bool:
        """Take the dot-lock: made whole under a name of our own, with our pid
        in it, then linked to ``FILE.lock`` (as liblockfile does), so that a
        run killed at any instruction never leaves an empty dot-lock, which
        only its age could tell stale (5 minutes of "mbox is locked")."""
        mine = f"{self.lock_path}.fetchpop-{os.getpid()}"
        self._remove_dead_runs_files()
        try:
            fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, b"%d\n" % os.getpid())
                # Durable before the link: after a power cut FILE.lock is
                # absent or holds the pid, never empty (only age tells those).
                os.fsync(fd)
                self._lock_proof = f"{os.fstat(fd).st_ino}:{os.getpid()}"
            finally:
                os.close(fd)
        except OSError as exc:
            raise os_error(exc, f"cannot create lock file {self.lock_path}") from exc
        try:
            for _attempt in range(3):
                try:
                    os.link(mine, self.lock_path)
                except FileExistsError:
                    if self._remove_stale_dotlock():
                        continue
                    return False
                except OSError as exc:
                    raise os_error(exc, f"cannot create lock file {self.lock_path}") from exc
                self._dotlocked = True
                self._touched = time.monotonic()
                return True
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(mine)

    def _remove_dead_runs_files(self) -> None:
        """A run killed between its link and its unlink leaves its own name behind."""
        prefix = f"{self.lock_path.name}.fetchpop-"
        with contextlib.suppress(OSError), os.scandir(self.lock_path.parent) as entries:
            for entry in entries:
                pid = entry.name[len(prefix) :]
                if entry.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _remove_stale_dotlock(self) -> bool:
        try:
            if not self._dotlock_is_stale():
                return False
            self.lock_path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise os_error(exc, f"cannot remove stale lock file {self.lock_path}") from exc
        return True

    def _dotlock_is_stale(self) -> bool:
        """As liblockfile: the dot-lock of a process that is gone, or one untouched for 5 minutes.

        A killed run (SIGKILL, a crash) cannot remove its dot-lock; the pid in
        it tells. Without a readable pid only the age counts. It is opened
        without blocking and without following a link: a FIFO put there would
        hang a plain open() for ever. Anything but a regular file is refused.
        """
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(self.lock_path, flags)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            message = f"lock file {self.lock_path} is a symbolic link; refusing it"
            raise DeliveryError(message) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise DeliveryError(
                    f"lock file {self.lock_path} is not a regular file; refusing to go on"
                )
            content = os.read(fd, 32)
            age = time.time() - info.st_mtime
        finally:
            os.close(fd)
        if age >= _STALE_LOCK_AGE:
            return True
        text = content.strip()
        if f"{info.st_ino}:{text.decode('ascii', 'replace')}" in self._own_locks:
            return True  # a dead run's, says the journal (its pid may live again)
        if not text.isdigit() or not 0 < int(text) < 1 << 22:
            return False
        pid = int(text)
        if pid == os.getpid():
            return True  # we hold no dot-lock here: a dead namesake's
        return not _alive(pid)

    def _same_file(self, fd: int) -> bool:
        try:
            now, ours = os.stat(self.path), os.fstat(fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self.error(exc) from exc
        return (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)

    def _release(self, fd: int) -> None:
        # Reverse order of taking: the dot-lock, then the fcntl lock.
        try:
            if self._dotlocked:
                self._dotlocked = False
                self.lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # releases the fcntl lock


def _next_separator(fd: int, start: int) -> int:
    """Where the next ``From `` line after the one at *start* begins, or the
    file's length."""
    pos = start + 1
    while True:
        data = os.pread(fd, 1024 * 1024 + 5, pos)
        found = data.find(b"\nFrom ")
        if found >= 0:
            return pos + found + 1
        if len(data) < 1024 * 1024 + 5:
            return pos + len(data)
        pos += 1024 * 1024


def _parse_intent(intent: str) -> tuple[int | None, str]:
    """An intent's offset (None when unreadable) and dot-lock proof ("" if none)."""
    offset, _, rest = intent.partition(" ")
    proof = rest[len("lock=") :] if rest.startswith("lock=") else ""
    return (int(offset) if offset.isdigit() else None), proof


class _Reader:
    """Sequential reads of an mbox from an offset, for :meth:`MboxTarget.confirm`.

    Once *differs* is set (a byte unlike the expected one) or *hit_eof* (the
    file ended first), nothing more is read; with *hit_eof* alone, every
    byte to the end of the file was as expected.
    """

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = fd
        self.position = offset
        self.hit_eof = False
        self.differs = False

    def skip_separator(self) -> None:
        """Skip the blank-line prefix (at most two newlines) and the ``From `` line."""
        head = os.pread(self._fd, 2 + 1024, self.position)
        start = 0
        while start < 2 and head[start : start + 1] == b"\n":
            start += 1
        line = head[start:]
        end = line.find(b"\n")
        if end >= 0 and line.startswith(_FROM):
            self.position += start + end + 1
        elif end < 0 and len(head) < 2 + 1024 and _FROM.startswith(line[:5]):
            self.hit_eof = True  # cut short inside the separator
        else:
            self.differs = True

    def expect(self, data: bytes) -> None:
        """Compare the next bytes of the file with *data*."""
        view = memoryview(data)
        while view and not (self.differs or self.hit_eof):
            piece = view[: 1024 * 1024]
            got = os.pread(self._fd, len(piece), self.position)
            if got != piece[: len(got)]:
                self.differs = True
                self.position += next(i for i, b in enumerate(got) if b != piece[i])
                return
            self.position += len(got)
            if len(got) < len(piece):
                self.hit_eof = True
            view = view[len(piece) :]

    def at_boundary(self) -> bool:
        """End of file, or the next message's separator."""
        following = os.pread(self._fd, 5, self.position)
        return following in (b"", _FROM) or following.startswith(b"\n")
