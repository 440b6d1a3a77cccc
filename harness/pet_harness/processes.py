"""Child processes that are always stopped: own process group, log file, reaper.

Every process the harness starts goes through :class:`ManagedProcess`:

* it runs in a new session (its own process group), so stopping it stops whatever
  it forked too;
* its output goes to a log file that tests attach to their reports;
* on Linux it gets ``PR_SET_PDEATHSIG=SIGKILL`` unless told to outlive the harness,
  so even a SIGKILLed harness leaves nothing running (``prctl`` is resolved in the parent: the
  child, between fork and exec, loads nothing). The signal is tied to the
  *thread* that started the child: start processes from a thread that outlives them
  (the main thread, as the harness does), or the child dies when that thread ends;
* its group is signalled only while the leader is not yet reaped (a reaped pid may be reused),
  and what a leader that exited left in its group is killed before the leader is reaped;
* every live process is registered, and :func:`stop_all` (run at exit and from the
  SIGTERM handler installed by :func:`install_signal_handlers`) stops them all.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess  # nosec B404 # argv lists, never a shell
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

_LIVE: set[ManagedProcess] = set()
_LOCK = threading.Lock()
_PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)


def _resolve_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up once in the parent: loading a library in the child between fork and
    exec can deadlock when the parent has threads (one may have held the loader's or malloc's lock
    at the fork, and only the forking thread exists in the child)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # libc is loaded already: nothing is opened
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _resolve_prctl()


def _die_with_parent() -> None:  # runs in the child between fork and exec: calls what was resolved, loads nothing
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGKILL)


class ProcessError(RuntimeError):
    """A managed process failed to start or exited when it should not have."""


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        outlive_parent: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.outlive_parent = outlive_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._reaping = threading.RLock()  # re-entrant: a signal handler may stop it mid-call

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> ManagedProcess:
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        preexec = None if self.outlive_parent or _PRCTL is None else _die_with_parent
        try:
            self._proc = subprocess.Popen(  # nosec B603 # argv of our own, no shell
                self.argv,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except OSError as exc:
            self._log.close()
            raise ProcessError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        with _LOCK:
            _LIVE.add(self)
        return self

    # The group is signalled only while its leader is known not to be reaped: a zombie keeps its
    # pid, and so the group id, reserved. Once reaped, the pid (and a group of that number, if no
    # member is left) can be anyone's, and killpg could hit a stranger's new session. So every path
    # waits for the exit without reaping (waitid WNOWAIT), SIGKILLs what the leader left in its
    # group, and only then reaps; one lock keeps threads from reaping in between.

    def _exited(self) -> bool:
        """Whether the leader has exited, without reaping it."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True  # reaped behind Popen's back: nothing to signal any more

    def _killpg(self, sig: int) -> None:
        """Signal the whole group, if its leader is not reaped yet (hold ``_reaping``)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def _settle(self) -> int | None:
        """The exit code once the leader has exited (what it left in its group SIGKILLed first, then
        the leader reaped); None while it runs."""
        with self._reaping:
            proc = self._proc
            if proc is None:
                return None
            if proc.returncode is not None:
                return proc.returncode
            if not self._exited():
                return None
            self._killpg(signal.SIGKILL)  # the leader is a zombie: the group id is still surely its
            return proc.wait()

    def _wait_exited(self, timeout: float | None) -> bool:
        """Wait until the leader has exited (not reaping it); False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while not self._exited():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        return True

    @property
    def running(self) -> bool:
        """Whether the leader runs; once it has exited, what it left in its group is killed."""
        return self._proc is not None and self._settle() is None

    @property
    def returncode(self) -> int | None:
        return self._settle() if self._proc else None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (SIGSTOP freezes it all)."""
        with self._reaping:
            if self._proc is None or self._settle() is not None:
                raise ProcessError(f"{self.name} is not running")
            self._killpg(sig)

    def wait(self, timeout: float | None = None) -> int:
        if self._proc is None:
            raise ProcessError(f"{self.name} was never started")
        if not self._wait_exited(timeout):
            raise subprocess.TimeoutExpired(self.argv, timeout or 0)
        code = self._settle()
        if code is None:  # _wait_exited said it exited
            raise ProcessError(f"{self.name} exited but its exit code cannot be read")
        return code

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; idempotent."""
        if self._proc is None:
            return None
        with self._reaping:
            running = self._settle() is None
            if running:
                self._killpg(signal.SIGCONT)  # a frozen process cannot handle SIGTERM
                self._killpg(signal.SIGTERM)
        if running and not self._wait_exited(grace):
            with self._reaping:
                self._killpg(signal.SIGKILL)
            self._wait_exited(None)
        code = self._settle()  # also SIGKILLs what the leader left in its group, before reaping it
        self._forget()
        return code

    def kill(self) -> int | None:
        """SIGKILL the group at once, as a crash would."""
        if self._proc is None:
            return None
        with self._reaping:
            self._killpg(signal.SIGKILL)
        self._wait_exited(None)
        code = self._settle()
        self._forget()
        return code

    def _forget(self) -> None:
        with _LOCK:
            _LIVE.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self, max_bytes: int = 2_000_000) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        if len(data) > max_bytes:
            data = b"[... earlier output cut ...]\n" + data[-max_bytes:]
        return data.decode(errors="replace")


def live_processes() -> list[ManagedProcess]:
    with _LOCK:
        return sorted(_LIVE, key=lambda p: p.pid or 0)


def stop_all(grace: float = 5.0) -> None:
    """Stop every process this interpreter started and has not stopped yet, newest first."""
    for proc in reversed(live_processes()):
        with contextlib.suppress(Exception):
            proc.stop(grace)


atexit.register(stop_all)

_installed = False


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into ``SystemExit`` so ``finally`` blocks and atexit run.

    SIGINT already raises ``KeyboardInterrupt``. Only the main thread can install handlers.
    """
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _exit)
    _installed = True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
