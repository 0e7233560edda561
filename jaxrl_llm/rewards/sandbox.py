"""A sandbox for model-written Python: run untrusted programs in subprocesses, many at once.

Every program runs in a fresh interpreter (`python -I -S`: no user site, no PYTHON* variables,
stdlib only) with:

  * a wall-clock timeout, after which its whole process group is killed, and CPU-time, address
    space, process-count, file-size and open-file limits (`resource.setrlimit`; no core files);
  * a fresh temporary working directory (deleted afterwards), a clean environment (PATH, LANG and
    HOME = that directory only), stdin from the caller or empty, and stdout/stderr kept up to
    `max_output_bytes` each (the rest discarded; past `kill_output_bytes` the program is killed);
  * an unprivileged identity: as root, the program runs as a uid of its own per pool slot
    (from `uid_base` up, no passwd entry, reserved across processes by a lock file, so that
    concurrent sandboxes never share one; supplementary groups dropped, `no_new_privs`), so the
    RLIMIT_NPROC limit counts that sample's processes alone and files of the trainer's user in
    mode 0700 directories are unreadable. Not as root, it runs as the current user: RLIMIT_NPROC
    then counts every process of that user, so the limit is set to the user's current count plus
    headroom for the pool and a fork bomb can starve concurrent samples (not the trainer's
    already-running processes), and the user's own files are not protected from the program
    (run the trainer as root for a separate identity);
  * no network. Two mechanisms, chosen by `network`:
      - 'namespace' (kernel-enforced, any language): the program gets new network, mount, PID,
        IPC and UTS namespaces. Its network namespace has only a loopback device that is down, so
        every connect fails (127.0.0.1 included); its working directory is a size-capped tmpfs;
        /proc shows only its own processes; directories given in `hide_paths` (default: the
        trainer's working directory) are covered by an empty read-only tmpfs; when the
        interpreter lives under a directory the sandbox user may not enter (e.g. /root/.pyenv),
        that directory is replaced by a tmpfs holding a read-only bind mount of the interpreter
        alone. When the PID namespace's first process exits, the kernel kills every process in
        it, so nothing outlives a sample. Needs root; not as root it needs unprivileged user
        namespaces and gets user, network and PID namespaces only (no mounts).
      - 'deny' (fallback where namespaces are refused): a PEP 578 audit hook, installed before
        the program runs, refuses socket creation/connects/DNS, running other programs
        (exec, spawn, system, subprocess, `_posixsubprocess`), ctypes, writes under /proc and
        signals to other processes.
        Python code cannot remove an audit hook, children made with os.fork inherit it, and
        `-I` stops environment variables and user site-packages from running code first; what
        it cannot stop is an exploit of a memory-safety bug in CPython itself. Programs that
        run other executables fail in this mode.
    'auto' (the default) probes 'namespace' once and falls back to 'deny' with a warning.

Each sample goes through a small launcher (`python -I -S -c <launcher>`, run as the trainer's
user, spawned without preexec_fn so it is safe from threads and uses vfork): it creates the
namespaces, forks, and its child mounts, sets the limits, drops to the sandbox uid (setgroups,
setgid, setuid after the namespaces exist, so RLIMIT_NPROC binds) and execs the interpreter.
The launcher is a child subreaper: when the program ends (or, on the parent's timeout or
output flood, SIGTERM asks it to kill it) it kills the program's process group and then every
descendant left, double-forked or setsid ones included, and collects them before exiting, so no
process of a sample outlives run() in either mode. If the launcher itself does not answer, the
parent kills its group and, as root, every process of the sample's uid.

`run_many(programs)` scores many programs on a bounded thread pool (`workers`, default
os.cpu_count()). `Program(source, stdin, tests)` with tests runs each test (Python statements,
e.g. asserts) after the source in the same interpreter and reports which passed on a private
pipe, tagged with a per-run nonce that the harness reads before the program starts, so neither
printing nor exit codes (`os._exit(0)`) can fake a pass short of inspecting the harness's
frames; the tests come on stdin before the program runs, not as files it could read.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import fcntl
import json
import math
import os
import pwd
import queue
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Sequence

STATUSES = ("ok", "timeout", "memory", "error", "killed", "output_limit")
MEMORY_EXIT_CODE = 204  # the harness exits with this after an uncaught MemoryError
SETUP_EXIT_CODE = 205  # the launcher failed before the program started (see SandboxError)
DEFAULT_UID_BASE = 3_900_000_000  # slot i runs as uid/gid DEFAULT_UID_BASE + i (root only)
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (not the program's fault): bad config, a
    refused namespace or mount, an interpreter the sandbox user cannot execute."""


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation of each sandboxed program (see the module docstring).

    timeout_s: wall-clock limit; cpu_time_s: RLIMIT_CPU (None: ceil(timeout_s)); memory_bytes:
    RLIMIT_AS; max_processes: RLIMIT_NPROC (tasks, threads included, of the sample's uid);
    max_file_bytes: RLIMIT_FSIZE; max_open_files: RLIMIT_NOFILE; tmpfs_bytes: size of the
    working-directory tmpfs ('namespace' only); max_output_bytes: stdout and stderr kept, each;
    kill_output_bytes: stdout + stderr after which the program is killed ('output_limit');
    network: 'auto' | 'namespace' | 'deny'; workers: pool size (None: os.cpu_count());
    uid_base: first sandbox uid when running as root; python: the interpreter for programs
    (None: this one, else a system python3 the sandbox user can run); tmp_dir: where the
    per-sample directories go (None: tempfile's default); hide_paths: directories covered in
    'namespace' mode (None: the trainer's working directory).
    """

    timeout_s: float = 5.0
    cpu_time_s: int | None = None
    memory_bytes: int = 1 << 30
    max_processes: int = 32
    max_file_bytes: int = 16 << 20
    max_open_files: int = 64
    tmpfs_bytes: int = 64 << 20
    max_output_bytes: int = 64 << 10
    kill_output_bytes: int = 4 << 20
    network: str = "auto"
    workers: int | None = None
    uid_base: int = DEFAULT_UID_BASE
    python: str | None = None
    tmp_dir: str | None = None
    hide_paths: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.network not in ("auto", "namespace", "deny"):
            raise ValueError(f"network must be 'auto', 'namespace' or 'deny', got {self.network!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclasses.dataclass(frozen=True)
class Program:
    """A program to run: its source, its stdin, and optionally tests (each a string of Python
    statements run after the source in its namespace; a test passes when it raises nothing)."""

    source: str
    stdin: str | bytes = b""
    tests: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """The outcome of one program.

    status: 'ok' (exit 0) | 'timeout' (wall or CPU limit) | 'memory' (MemoryError or the
    address-space limit) | 'error' (non-zero exit) | 'killed' (another signal) | 'output_limit'
    (killed for flooding stdout/stderr). exit_code: the exit status, -N for signal N, None when
    the sandbox killed it. stdout, stderr: decoded, each cut at max_output_bytes (`truncated`
    says so). tests: one bool per test of a Program with tests (True = passed), else None.
    """

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    wall_time: float
    truncated: bool = False
    tests: tuple[bool, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def pass_rate(self) -> float:
        """Fraction of tests passed (0.0 without tests)."""
        return sum(self.tests) / len(self.tests) if self.tests else 0.0


Result = SandboxResult


# The sandboxed interpreter's first code: optional network/exec denial, then the program, then
# (tests mode) each test, reported on a private pipe with a nonce read from stdin beforehand.
_BOOT = r"""
import os, sys
def _sandbox_boot():
    deny, path, report_fd = sys.argv[1] == "1", sys.argv[2], int(sys.argv[3])
    if deny:
        events = frozenset((
            "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
            "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
            "socket.getnameinfo", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
            "subprocess.Popen", "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle",
            "ctypes.cdata", "ctypes.cdata/buffer", "ctypes.call_function", "ctypes.addressof",
        ))
        modules = frozenset(("_ctypes", "_posixsubprocess"))
        def hook(event, args, events=events, modules=modules, PermissionError=PermissionError,
                 str=str, isinstance=isinstance, fspath=os.fsdecode, getpid=os.getpid):
            if event in events or (event == "import" and args[0] in modules):
                what = f"import {args[0]}" if event == "import" else event
                raise PermissionError(f"sandbox: {what} is not allowed (no network, no running programs)")
            if event in ("os.kill", "os.killpg") and args[0] != getpid():
                raise PermissionError(f"sandbox: {event} of another process is not allowed")
            if event == "open" and args[0] is not None and not isinstance(args[0], int):
                name, mode = fspath(args[0]), args[1]
                writes = (args[2] & 3) if mode is None else any(ch in str(mode) for ch in "wax+")
                if writes and name.startswith("/proc"):
                    raise PermissionError(f"sandbox: writing {name} is not allowed")
        sys.addaudithook(hook)
    job = None
    if report_fd >= 0:
        import json
        job = json.loads(sys.stdin.buffer.readline())
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    with open(path, "rb") as f:
        source = f.read()
    sys.argv = [path]
    scope = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
    _exec, _compile, _write, _exit, _flush = exec, compile, os.write, os._exit, sys.stdout.flush
    if job is None:
        try:
            _exec(_compile(source, path, "exec"), scope)
        except MemoryError:
            import traceback
            traceback.print_exc()
            _flush()
            _exit(@MEMORY_EXIT_CODE@)
        return
    lines = [(f"{job['nonce']} {i} 1\n".encode(), f"{job['nonce']} {i} 0\n".encode())
             for i in range(len(job["tests"]))]
    tests = [(i, t) for i, t in enumerate(job["tests"])]
    del job
    try:
        _exec(_compile(source, path, "exec"), scope)
    except BaseException as e:
        import traceback
        if not isinstance(e, SystemExit):
            traceback.print_exc()
        sys.stdout.flush()
        _exit(@MEMORY_EXIT_CODE@ if isinstance(e, MemoryError) else 1)
    for i, test in tests:
        try:
            _exec(_compile(test, f"<test {i}>", "exec"), scope)
            line = lines[i][0]
        except BaseException as e:
            line = lines[i][1]
            try:
                print(f"test {i} failed: {type(e).__name__}: {e}"[:500], file=sys.stderr)
            except BaseException:
                pass
        try:
            _write(report_fd, line)
        except OSError:
            pass
_sandbox_boot()
""".replace("@MEMORY_EXIT_CODE@", str(MEMORY_EXIT_CODE))

# Runs as the trainer's user: namespaces, fork; the child mounts, limits, drops to the sandbox
# user and execs the interpreter; the launcher waits and exits as the child did.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys, time
spec = json.loads(sys.argv[1])
err_fd, uid, gid = spec["err_fd"], spec["uid"], spec["gid"]
def fail(stage, e):
    try:
        os.write(err_fd, f"{stage}: {type(e).__name__}: {e}".encode()[:4000])
    finally:
        os._exit(@SETUP_EXIT_CODE@)
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
def check(result, what):
    if result != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
def mount(source, target, kind, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(source), enc(target), enc(kind), flags, enc(data)), f"mount {kind or source} on {target}")
def children():
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
        return found
def kill_descendants(seconds=5.0):
    # As a child subreaper, this process adopts every orphan below it (double forks and setsid
    # included): kill the children, collect them, and repeat until none is left.
    deadline = time.monotonic() + seconds
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        for child in children():
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)
def kill_uid():
    # Every process of the sandbox uid (Linux spares the caller): the parent's last resort.
    killer = os.fork()
    if killer == 0:
        try:
            os.setgroups([]); os.setgid(gid); os.setuid(uid); os.kill(-1, signal.SIGKILL)
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(killer, 0)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
check(libc.prctl(36, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
if spec.get("reap_only"):
    kill_uid()
    kill_uid()
    os._exit(0)
pid = None
def stop(signum, frame):
    # The parent's timeout: kill the program (in 'namespace' mode the PID namespace goes with its
    # first process; waitpid below returns once every process in it is gone).
    if pid is not None:
        for kill, target in ((os.killpg, pid), (os.kill, pid)):
            try:
                kill(target, signal.SIGKILL)
            except OSError:
                pass
        kill_descendants()
signal.signal(signal.SIGTERM, stop)
try:
    if spec["unshare"]:
        check(libc.unshare(spec["unshare"]), "unshare")
    pid = os.fork()
except BaseException as e:
    fail("unshare", e)
if pid == 0:
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        check(libc.prctl(1, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
        os.setpgid(0, 0)
        MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
        MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
        if spec["mounts"]:
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            expose = spec["expose"]
            if expose:
                keep = os.open(expose["path"], os.O_PATH | os.O_DIRECTORY)
                mount("tmpfs", expose["cover"], "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
                os.makedirs(expose["path"], mode=0o755, exist_ok=True)
                mount(f"/proc/self/fd/{keep}", expose["path"], None, MS_BIND | MS_REC)
                mount(None, expose["path"], None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
                os.close(keep)
            mount("tmpfs", spec["cwd"], "tmpfs", MS_NOSUID | MS_NODEV,
                  f"size={spec['tmpfs_bytes']},mode=700,uid={uid},gid={gid}")
            for path in spec["hide"]:
                try:
                    mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=755")
                except OSError:
                    pass
            try:
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            except OSError:
                pass
        for name, limit in spec["rlimits"].items():
            resource.setrlimit(getattr(resource, name), tuple(limit))
        if uid is not None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        check(libc.prctl(1, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")  # cleared by setuid
        os.chdir(spec["cwd"])
        os.set_inheritable(err_fd, False)  # closed by a successful exec: EOF means it started
        for fd in spec["keep_fds"]:
            os.set_inheritable(fd, True)
        os.execve(spec["python"], spec["argv"], spec["env"])
    except BaseException as e:
        fail("setup", e)
os.close(err_fd)
for fd in spec["keep_fds"]:
    os.close(fd)
try:
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    try:
        os.killpg(pid, signal.SIGKILL)  # the program's group, while its pid is still reserved
    except OSError:
        pass
    _, status = os.waitpid(pid, 0)
except ChildProcessError:
    status = 0  # already collected by stop()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kill_descendants()
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)
os._exit(os.waitstatus_to_exitcode(status))
""".replace("@SETUP_EXIT_CODE@", str(SETUP_EXIT_CODE))


def _user_processes(uid: int) -> int:
    """Processes (tasks of every thread group count once) whose real uid is `uid`."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        count += int(line.split()[1]) == uid
                        break
        except OSError:
            continue
    return count


def _can_enter(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _blocked_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The topmost directory on the way to `path` (itself included) that uid cannot enter."""
    parts = [p for p in os.path.realpath(path).split(os.sep) if p]
    for directory in ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]:
        if not _can_enter(directory, uid, gid):
            return directory
    return None


def _reserve_uids(base: int, count: int) -> tuple[list[int], list[int]]:
    """`count` sandbox uids from `base` up that no other Sandbox (in any process) holds and no
    account owns, each held by an exclusive flock on a file in a directory only root can enter;
    returns (uids, lock fds). The locks go with the fds (closed by Sandbox.close or at exit)."""
    directory = os.path.join(tempfile.gettempdir(), f"jaxrl-sandbox-uids-{os.geteuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise SandboxError(f"{directory} must be a directory owned by uid {os.geteuid()} with mode 0700")
    uids, fds = [], []
    for uid in range(base, base + 100_000):
        if len(uids) == count:
            return uids, fds
        try:
            pwd.getpwuid(uid)
            continue  # an account's uid: never run samples as it
        except KeyError:
            pass
        fd = os.open(
            os.path.join(directory, str(uid)), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        uids.append(uid)
        fds.append(fd)
    _release(fds)
    raise SandboxError(f"no {count} free sandbox uids from uid_base {base}")


def _release(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def _is_within(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _rmtree(path: str) -> None:
    def retry(function, failed, _):
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
        except OSError:
            pass
        function(failed)

    shutil.rmtree(path, onerror=retry)


class Sandbox:
    """Runs untrusted programs with the limits of `config` (or keyword overrides of the default
    SandboxConfig). `run(program)` one, `run_many(programs)` many on a bounded pool; both return
    Result. The isolation actually used is in `network` ('namespace' | 'deny') and `user`
    ('slots': a uid per pool slot | 'current') after the first run (or `probe()`)."""

    def __init__(self, config: SandboxConfig | None = None, **overrides):
        self.config = dataclasses.replace(config or SandboxConfig(), **overrides)
        self.workers = self.config.workers or os.cpu_count() or 1
        self.root = os.geteuid() == 0
        self.user = "slots" if self.root else "current"
        self.network: str | None = None
        self.python: str | None = None
        self._ready = False
        self._launcher_python = os.path.realpath(sys.executable)
        self._lock = threading.Lock()
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.workers):
            self._slots.put(slot)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._expose = None
        self._hide: list[str] = []
        self._nproc_base = 0
        self.uids: list[int] = []
        self._uid_locks: list[int] = []
        if self.root:
            self.uids, self._uid_locks = _reserve_uids(self.config.uid_base, self.workers)
            weakref.finalize(self, _release, list(self._uid_locks))

    # ---- set-up -------------------------------------------------------------------------------

    def _identity(self, slot: int) -> tuple[int | None, int | None]:
        if not self.root:
            return None, None
        return self.uids[slot], self.uids[slot]

    def probe(self) -> Sandbox:
        """Chooses the isolation (and interpreter) on first use; later calls return at once."""
        if self._ready:
            return self
        with self._lock:
            if not self._ready:
                self._choose()
                self._ready = True
        return self

    def _choose(self) -> None:
        wanted = self.config.network
        errors = []
        if wanted in ("auto", "namespace"):
            try:
                self._try("namespace", os.path.realpath(self.config.python or sys.executable))
                return
            except SandboxError as e:
                if wanted == "namespace":
                    raise
                errors.append(f"namespace: {e}")
        for python in self._candidates():
            try:
                self._try("deny", python)
                if wanted == "auto":
                    warnings.warn(
                        "sandbox: network namespaces are unavailable here, falling back to denying "
                        f"sockets with an audit hook (weaker; see jaxrl_llm.rewards.sandbox). {errors[0]}",
                        stacklevel=4,
                    )
                return
            except SandboxError as e:
                errors.append(f"deny with {python}: {e}")
        raise SandboxError("no sandbox could run a program here:\n  " + "\n  ".join(errors))

    def _candidates(self) -> list[str]:
        if self.config.python:
            return [os.path.realpath(self.config.python)]
        found = [os.path.realpath(sys.executable)]
        for name in ("python3", "/usr/bin/python3", "/usr/local/bin/python3"):
            path = shutil.which(name, path=SAFE_PATH)
            if path and os.path.realpath(path) not in found:
                found.append(os.path.realpath(path))
        return found

    def _try(self, network: str, python: str) -> None:
        self.network, self.python = network, python
        self._expose, self._hide = None, []
        try:
            uid, gid = self._identity(0)
            if network == "namespace" and self.root:
                self._plan_mounts(python, uid, gid)
            if not self.root:
                headroom = self.workers * (self.config.max_processes + 2)
                self._nproc_base = _user_processes(os.getuid()) + headroom
            result = self._run_in_slot(Program("import sys; print('ok', sys.version_info[0])"))
            if result.status != "ok" or result.stdout != "ok 3\n":
                raise SandboxError(f"probe program gave {result.status}: {result.stderr[-2000:]!r}")
            if network == "namespace":
                probe = "import socket\ntry:\n socket.create_connection(('127.0.0.1', 9), 1)\nexcept OSError as e:\n print(e.errno)"
                result = self._run_in_slot(Program(probe))
                if result.stdout.strip() not in (str(errno.ENETUNREACH), str(errno.EADDRNOTAVAIL)):
                    raise SandboxError(f"the network namespace still reaches 127.0.0.1: {result}")
        except BaseException:
            self.network = self.python = None
            raise

    def _plan_mounts(self, python: str, uid: int, gid: int) -> None:
        prefix = os.path.realpath(sys.base_prefix)
        if not _is_within(python, prefix):
            prefix = os.path.dirname(os.path.dirname(python))
        cover = _blocked_ancestor(prefix, uid, gid)
        tmp_root = os.path.realpath(self.config.tmp_dir or tempfile.gettempdir())
        if cover is not None:
            if _is_within(tmp_root, cover):
                raise SandboxError(f"the sandbox's tmp_dir {tmp_root} lies under {cover}, which is hidden")
            self._expose = {"path": prefix, "cover": cover}
        hide = self.config.hide_paths if self.config.hide_paths is not None else (os.getcwd(),)
        for path in hide:
            path = os.path.realpath(path)
            keeps = (tmp_root, prefix, python, self._launcher_python)
            if not os.path.isdir(path) or path == "/" or any(_is_within(k, path) for k in keeps):
                continue
            if cover is not None and _is_within(path, cover):
                continue  # already hidden under the tmpfs that covers `cover`
            self._hide.append(path)

    # ---- running ------------------------------------------------------------------------------

    def run(self, program: Program | str, stdin: str | bytes | None = None) -> SandboxResult:
        """Runs one program (a Program, or source text with optional stdin)."""
        if isinstance(program, str):
            program = Program(program, stdin if stdin is not None else b"")
        self.probe()
        return self._run_in_slot(program)

    def _run_in_slot(self, program: Program) -> SandboxResult:
        slot = self._slots.get()
        try:
            return self._run(program, slot)
        finally:
            self._slots.put(slot)

    def run_many(self, programs: Sequence[Program | str]) -> list[SandboxResult]:
        """Runs programs on the pool (at most `workers` at once); results in the same order."""
        self.probe()
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        self.workers, thread_name_prefix="sandbox"
                    )
        return list(self._pool.map(self.run, programs))

    def close(self) -> None:
        """Stops the pool; the sandbox stays usable (a later run_many starts a new pool)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _rlimits(self) -> dict:
        c = self.config
        cpu = c.cpu_time_s if c.cpu_time_s is not None else max(1, math.ceil(c.timeout_s))
        nproc = c.max_processes if self.root else self._nproc_base
        return {
            "RLIMIT_CPU": (cpu, cpu + 1),
            "RLIMIT_AS": (c.memory_bytes, c.memory_bytes),
            "RLIMIT_NPROC": (nproc, nproc),
            "RLIMIT_FSIZE": (c.max_file_bytes, c.max_file_bytes),
            "RLIMIT_NOFILE": (c.max_open_files, c.max_open_files),
            "RLIMIT_CORE": (0, 0),
        }

    def _run(self, program: Program, slot: int) -> SandboxResult:
        c = self.config
        uid, gid = self._identity(slot)
        namespace = self.network == "namespace"
        unshare = 0
        if namespace:
            unshare = _CLONE_NEWNET
            if self.root:
                unshare |= _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
            else:
                unshare |= _CLONE_NEWUSER | _CLONE_NEWPID
        tmp = tempfile.mkdtemp(prefix="jaxrl-sandbox-", dir=c.tmp_dir)
        fds: list[int] = []
        try:
            work = os.path.join(tmp, "work")
            main = os.path.join(tmp, "main.py")
            os.mkdir(work, 0o700)
            with open(main, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(program.source)
            os.chmod(main, 0o444)
            if uid is not None:
                os.chown(work, uid, gid)
                os.chmod(tmp, 0o711)  # the sandbox user may enter (not list) it and read main.py
            err_r, err_w = os.pipe()
            fds += [err_r, err_w]
            report_r = report_w = -1
            stdin = program.stdin.encode() if isinstance(program.stdin, str) else bytes(program.stdin)
            nonce = None
            if program.tests is not None:
                report_r, report_w = os.pipe()
                fds += [report_r, report_w]
                nonce = secrets.token_hex(16)
                stdin = (json.dumps({"nonce": nonce, "tests": list(program.tests)}) + "\n").encode()
            env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": work}
            spec = {
                "err_fd": err_w,
                "unshare": unshare,
                "uid": uid,
                "gid": gid,
                "mounts": namespace and self.root,
                "expose": self._expose,
                "hide": self._hide,
                "tmpfs_bytes": c.tmpfs_bytes,
                "rlimits": self._rlimits(),
                "cwd": work,
                "keep_fds": [report_w] if report_w >= 0 else [],
                "python": self.python,
                "argv": [
                    self.python,
                    "-I",
                    "-S",
                    "-c",
                    _BOOT,
                    str(int(self.network == "deny")),
                    main,
                    str(report_w),
                ],
                "env": env,
            }
            start = time.monotonic()
            proc = subprocess.Popen(
                [self._launcher_python, "-I", "-S", "-c", _LAUNCHER, json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=tmp,
                env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"},
                start_new_session=True,
                close_fds=True,
                pass_fds=[fd for fd in (err_w, report_w) if fd >= 0],
            )
            for fd in (err_w, report_w):
                if fd >= 0:
                    os.close(fd)
                    fds.remove(fd)
            outcome = self._communicate(proc, stdin, err_r, report_r, start)
            wall = time.monotonic() - start
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            _rmtree(tmp)
        out, err, reports, setup_error, timed_out, flooded, truncated = outcome
        if setup_error:
            raise SandboxError(f"the sandbox launcher failed: {setup_error}")
        code = proc.returncode
        decode = lambda b: b.decode("utf-8", "replace")
        out, err = decode(out), decode(err)
        if flooded:
            status, code = "output_limit", None
        elif timed_out:
            status, code = "timeout", None
        elif code == 0:
            status = "ok"
        elif code == MEMORY_EXIT_CODE or (code == 1 and err.rstrip().endswith("MemoryError")):
            status = "memory"
        elif code == -signal.SIGXCPU:
            status = "timeout"
        elif code < 0:
            status = "killed"
        else:
            status = "error"
        tests = None
        if program.tests is not None:
            passed = [False] * len(program.tests)
            for line in reports.decode("ascii", "replace").splitlines():
                parts = line.split()
                if (
                    len(parts) == 3
                    and parts[0] == nonce
                    and parts[1].isdigit()
                    and int(parts[1]) < len(passed)
                ):
                    passed[int(parts[1])] = parts[2] == "1"
            tests = tuple(passed)
        return SandboxResult(status, code, out, err, wall, truncated, tests)

    def _communicate(self, proc, stdin: bytes, err_r: int, report_r: int, start: float):
        c = self.config
        deadline = start + c.timeout_s
        keep = c.max_output_bytes
        out, err, errors, reports = bytearray(), bytearray(), bytearray(), bytearray()
        sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, err_r: errors}
        if report_r >= 0:
            sinks[report_r] = reports
        produced, truncated, timed_out, flooded = 0, False, False, False
        selector = selectors.DefaultSelector()
        for fd in sinks:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        stdin_fd = proc.stdin.fileno()
        if stdin:
            os.set_blocking(stdin_fd, False)
            selector.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        written, exited_at, lingering = 0, None, False
        try:
            while len(selector.get_map()) > 0:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if exited_at is None and _exited(proc.pid):
                    exited_at = now
                if exited_at is not None and now - exited_at > 0.2:
                    lingering = True  # the launcher is gone; a leftover process holds the pipes
                    break
                for key, _ in selector.select(min(deadline - now, 0.05)):
                    fd = key.fd
                    if fd == stdin_fd:
                        try:
                            written += os.write(fd, stdin[written : written + 65536])
                        except BlockingIOError:
                            continue
                        except OSError:
                            written = len(stdin)
                        if written >= len(stdin):
                            selector.unregister(fd)
                            proc.stdin.close()
                        continue
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        selector.unregister(fd)
                        continue
                    sink = sinks[fd]
                    if sink is out or sink is err:
                        produced += len(chunk)
                        room = keep - len(sink)
                        if len(chunk) > room:
                            truncated = True
                        sink += chunk[: max(room, 0)]
                        if produced > c.kill_output_bytes:
                            flooded = True
                            break
                    elif len(sink) < 1 << 20:
                        sink += chunk
                if flooded:
                    break
        finally:
            selector.close()
            if not _exited(proc.pid):
                # The launcher kills the program and collects every process of it, then exits.
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=5.0)
                except (subprocess.TimeoutExpired, OSError):
                    pass
            # Then the launcher's group, while its pid is still ours (not reaped yet).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
        if (timed_out or flooded or lingering) and self.root and self.network == "deny":
            self._reap(proc)
        setup_error = errors.decode("utf-8", "replace")
        if proc.returncode == SETUP_EXIT_CODE and not (setup_error or timed_out or flooded):
            setup_error = "the launcher exited before starting the program"
        return bytes(out), bytes(err), bytes(reports), setup_error, timed_out, flooded, truncated

    def _reap(self, proc) -> None:
        """Kills every process left by a sample's uid ('deny' mode; the PID namespace does this
        in 'namespace' mode)."""
        spec = json.loads(proc.args[-1])
        if spec.get("uid") is None:
            return
        subprocess.run(
            [self._launcher_python, "-I", "-S", "-c", _LAUNCHER, json.dumps({"reap_only": True, **spec})],
            env={"PATH": SAFE_PATH},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )

    def __repr__(self) -> str:
        return (
            f"Sandbox(network={self.network!r}, user={self.user!r}, workers={self.workers}, "
            f"python={self.python!r}, timeout_s={self.config.timeout_s})"
        )


def _exited(pid: int) -> bool:
    """True once `pid` (our child) has exited, without reaping it (so its pid stays ours)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide Sandbox the code rewards use (SandboxConfig defaults unless
    `configure_default_sandbox` was called)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
        return _default


def configure_default_sandbox(config: SandboxConfig | None = None, **overrides) -> Sandbox:
    """Replaces the default sandbox (e.g. `configure_default_sandbox(timeout_s=10, workers=16)`)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
        _default = Sandbox(config, **overrides)
        return _default


def run(
    program: Program | str, stdin: str | bytes | None = None, sandbox: Sandbox | None = None
) -> SandboxResult:
    """Runs one program in `sandbox` (default: `default_sandbox()`)."""
    return (sandbox or default_sandbox()).run(program, stdin)


def run_many(programs: Sequence[Program | str], sandbox: Sandbox | None = None) -> list[SandboxResult]:
    """Runs programs in parallel on `sandbox`'s bounded pool (default: `default_sandbox()`)."""
    return (sandbox or default_sandbox()).run_many(programs)
