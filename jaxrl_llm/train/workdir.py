"""Operating a run's workdir: one run at a time, files written whole, damaged files named, and
the exit statuses a scheduler sees.

Lock. `lock_workdir(workdir)` takes an exclusive `fcntl.flock` on `<workdir>/.lock` (non-blocking)
and writes the holder's pid and host into it. The kernel drops a flock when its process dies, so
a SIGKILLed run never leaves a stale lock (the file stays; its content is only informative). A
second process gets `WorkdirLockedError` naming the workdir and the holder's pid, and
`python -m jaxrl_llm.main` exits with `EXIT_WORKDIR_LOCKED`. A `Trainer` takes it in `__init__`
(before it reads `config.json`) and releases it when `fit()` returns or raises. Within one
process the lock is re-entrant and counted (a second `Trainer` on the same workdir shares it:
what two processes must not share is the files; one process runs one loop at a time); the
flock is dropped when the last holder releases it. Multi-process runs take it on
process 0 only (the one that writes files). flock is local to one machine: on a network file
system that does not forward flocks, two machines are not kept apart.

Files. The run's own files (`config.json`, `summary.json`, `tokenizer/*`, `curves.png`, the
repaired `metrics.jsonl`) are written to `<name>.tmp`, fsynced and renamed over the old one
(`atomic_write`), so a kill leaves either the old or the new file, never half of one. Reading a
damaged `config.json` or `summary.json` raises `WorkdirFileError` naming the file, where it stops
parsing and the fix (`read_json`).

Exit statuses of `python -m jaxrl_llm.main` (`EXIT_*`): 0 finished (or already finished);
`128 + signum` when SIGTERM (143) or SIGINT (130) stopped the run after it wrote a checkpoint
(rerun the same command to resume: a scheduler should requeue on these); `EXIT_WORKDIR_LOCKED`
(75, EX_TEMPFAIL) when another process holds the workdir; 1 for any other error.

Signals. `handle_preemption()` turns SIGTERM/SIGINT into a flag the train loop polls between
steps and the evaluator between batches (then the loop saves a checkpoint and stops). A signal
that arrives while the main thread is inside one long call that never returns to Python (an XLA
compile, which cannot be interrupted) is honoured by a watchdog thread: when the run holds
nothing that its last checkpoint lacks (`StopSignals.clean`: at a phase's start or right after a
save, which includes every first-step compile), it exits the process after `grace_s` seconds with
the same status, as a kill at that point would (every file is written whole or repaired on
resume). Otherwise (completed steps not yet saved) it leaves the save to the loop, which gets to
it after the current step or evaluation batch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator

LOCK_FILE = ".lock"
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_WORKDIR_LOCKED = 75  # EX_TEMPFAIL (sysexits.h): try again later
SIGNAL_GRACE_S = 5.0  # the watchdog's wait before it ends a run that holds nothing unsaved


def exit_status(signum: int | None) -> int:
    """The documented exit status of a run stopped by `signum` (SIGTERM when unknown)."""
    return 128 + int(signum or signal.SIGTERM)


class WorkdirLockedError(RuntimeError):
    """Another process holds the workdir's lock."""

    def __init__(self, message: str, workdir: str, holder: dict):
        super().__init__(message)
        self.workdir = workdir
        self.holder = holder


class WorkdirFileError(ValueError):
    """A file of the run's workdir cannot be read; the message names it and the fix."""


# ------------------------------------------------------------------------------------- lock


class WorkdirLock:
    """An exclusive flock on `<workdir>/.lock`, held until as many `release()` as `acquire()`
    calls (or the process ends)."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self._fd: int | None = None
        self._count = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WorkdirLock:
        if self._fd is not None:
            self._count += 1
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_holder(self.path)
            pid = holder.get("pid", "unknown")
            where = f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else ""
            since = f", since {holder['started']}" if holder.get("started") else ""
            raise WorkdirLockedError(
                f"workdir {self.workdir!r} is in use by another run (pid {pid}{where}{since}; it holds "
                f"{self.path}): wait for it to finish or stop it, or use another --workdir",
                self.workdir,
                holder,
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        self._count = 1
        return self

    def release(self, force: bool = False) -> None:
        """One holder less (`force`: all of them); the flock goes with the last."""
        if self._fd is None:
            return
        self._count = 0 if force else self._count - 1
        if self._count > 0:
            return
        _HELD.pop(os.path.realpath(self.workdir), None)
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the pid is no longer the holder's
        os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(path: str) -> dict:
    """The holder's {pid, host, started} (it writes them right after locking: retried briefly)."""
    for _ in range(20):
        try:
            with open(path) as f:
                text = f.read().strip()
            if text:
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return {}


_HELD: dict[str, WorkdirLock] = {}  # this process's locks, by workdir


def lock_workdir(workdir: str) -> WorkdirLock:
    """This process's lock on `workdir`, taken (or, when this process holds it already, shared:
    counted, `release()` once per call); `WorkdirLockedError` if another process holds it."""
    key = os.path.realpath(workdir)
    lock = _HELD.get(key)
    if lock is None:
        lock = WorkdirLock(workdir)
    lock.acquire()
    _HELD[key] = lock
    return lock


def unlock_workdir(workdir: str) -> None:
    """Drops this process's lock on `workdir`, whoever holds it (no-op when it holds none)."""
    lock = _HELD.get(os.path.realpath(workdir))
    if lock is not None:
        lock.release(force=True)


# ------------------------------------------------------------------------------------ files


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """A file object on `path + '.tmp'` that replaces `path` when the block ends without an
    error (fsynced first, then renamed: readers and a kill see the old or the new file, whole)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj, **dump_kwargs) -> None:
    atomic_write(path, json.dumps(obj, **{"indent": 2, **dump_kwargs}) + "\n")


def save_tokenizer(tokenizer, directory: str) -> None:
    """`tokenizer.save(directory)`, each file replaced whole (written in `<directory>.tmp` first)."""
    tmp = directory.rstrip(os.sep) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    tokenizer.save(tmp)
    os.makedirs(directory, exist_ok=True)
    for name in sorted(os.listdir(tmp)):
        with open(os.path.join(tmp, name), "rb") as f:
            os.fsync(f.fileno())
        os.replace(os.path.join(tmp, name), os.path.join(directory, name))
    os.rmdir(tmp)
    _fsync_dir(directory)


def read_json(workdir: str, name: str, fix: str):
    """The JSON object in `workdir/name` (None when the file does not exist); a file that does
    not parse, or holds something other than an object, raises `WorkdirFileError` naming it,
    where it stops parsing, and `fix`."""
    path = os.path.join(workdir, name)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise WorkdirFileError(f"workdir {workdir!r}: {name} cannot be read ({error}): {fix}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        what = (
            "is empty"
            if not text.strip()
            else f"is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        )
        raise WorkdirFileError(f"workdir {workdir!r}: {name} {what}: {fix}") from None
    if not isinstance(value, dict):
        raise WorkdirFileError(
            f"workdir {workdir!r}: {name} holds a JSON {type(value).__name__}, not an object: {fix}"
        )
    return value


def committed_checkpoints(workdir: str) -> list[str]:
    """`checkpoints/<phase>/<step>` of every committed checkpoint in the workdir (relative paths)."""
    from jaxrl_llm.train.checkpoint import COMMIT_FILE  # orbax: imported only when needed

    root = os.path.join(workdir, "checkpoints")
    found = []
    for phase in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        phase_dir = os.path.join(root, phase)
        if not os.path.isdir(phase_dir):
            continue
        for step in sorted((s for s in os.listdir(phase_dir) if s.isdigit()), key=int):
            if os.path.exists(os.path.join(phase_dir, step, COMMIT_FILE)):
                found.append(f"checkpoints/{phase}/{step}")
    return found


# ---------------------------------------------------------------------------------- signals


class StopSignals:
    """What `handle_preemption` yields: `requested()` once SIGTERM/SIGINT arrived, `signum` the
    signal. The train loop sets `clean` (True when its last checkpoint holds everything done so
    far, which lets the watchdog end a run stuck in a compile) and calls `acknowledge()` when it
    starts saving for the signal."""

    def __init__(self):
        self.signum: int | None = None
        self.clean = True
        self.acknowledged = False

    def requested(self) -> bool:
        return self.signum is not None

    def acknowledge(self) -> None:
        self.acknowledged = True


@contextlib.contextmanager
def handle_preemption(
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    watchdog: bool = True,
    grace_s: float | None = None,
) -> Iterator[StopSignals]:
    """SIGTERM/SIGINT -> `StopSignals`; a second SIGINT raises KeyboardInterrupt. With
    `watchdog`, a run that does not act on the signal within `grace_s` seconds while `clean`
    is ended with `exit_status(signum)` (see the module docstring). Previous handlers (and
    wakeup fd) are restored on exit. Outside the main thread nothing is installed. `grace_s`
    defaults to `SIGNAL_GRACE_S`."""
    grace_s = SIGNAL_GRACE_S if grace_s is None else grace_s
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if signum == signal.SIGINT and stop.signum is not None:
            raise KeyboardInterrupt
        if stop.signum is None:
            stop.signum = signum

    previous = {s: signal.signal(s, handler) for s in signals}
    thread = read_fd = write_fd = None
    previous_fd = -1
    done = threading.Event()
    if watchdog:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        os.set_blocking(read_fd, False)
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        thread = threading.Thread(
            target=_watchdog, args=(stop, read_fd, set(signals), grace_s, done), daemon=True
        )
        thread.start()
    try:
        yield stop
    finally:
        if watchdog:
            signal.set_wakeup_fd(previous_fd)
            done.set()
            thread.join(timeout=1.0)
            os.close(write_fd)
            os.close(read_fd)
        for s, old in previous.items():
            signal.signal(s, old)


def _watchdog(stop: StopSignals, read_fd: int, signals: set[int], grace_s: float, done) -> None:
    """Waits for a signal byte on the wakeup fd (written by the C-level handler even while the
    main thread is inside a long native call), then ends the process if the loop has not acted
    on it within `grace_s` while nothing is unsaved."""
    signum = None
    while not done.is_set() and signum is None:
        try:
            data = os.read(read_fd, 64)
        except BlockingIOError:
            data = b""
        for byte in data:
            if byte in signals:
                signum = byte
                break
        if signum is None:
            done.wait(0.05)
    if signum is None:
        return
    since = time.monotonic()
    while not done.is_set() and not stop.acknowledged:
        if stop.clean and time.monotonic() - since >= grace_s:
            name = signal.Signals(signum).name
            status = exit_status(signum)
            os.write(
                2,
                (
                    f"\n{name}: the run is busy in a long call (e.g. an XLA compile) and holds nothing "
                    f"its last checkpoint lacks; exiting with status {status} (rerun the same command "
                    "to resume)\n"
                ).encode(),
            )
            os._exit(status)
        done.wait(0.05)
