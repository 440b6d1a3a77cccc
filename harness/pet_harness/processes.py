"""Child processes that are always stopped: own process group, log file, reaper.

Every process the harness starts goes through :class:`ManagedProcess`:

* it runs in a new session (its own process group), so stopping it stops whatever
  it forked too;
* its output goes to a log file that tests attach to their reports;
* on Linux it gets ``PR_SET_PDEATHSIG=SIGKILL`` unless told to outlive the harness,
  so even a SIGKILLed harness leaves nothing running. The signal is tied to the
  *thread* that started the child: start processes from a thread that outlives them
  (the main thread, as the harness does), or the child dies when that thread ends;
* every live process is registered, and :func:`stop_all` (run at exit and from the
  SIGTERM handler installed by :func:`install_signal_handlers`) stops them all.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

_LIVE: set[ManagedProcess] = set()
_LOCK = threading.Lock()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


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
        preexec = None if self.outlive_parent or not sys.platform.startswith("linux") else _die_with_parent
        try:
            self._proc = subprocess.Popen(
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

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (SIGSTOP freezes it all)."""
        if self._proc is None or self._proc.poll() is not None:
            raise ProcessError(f"{self.name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        if self._proc is None:
            raise ProcessError(f"{self.name} was never started")
        return self._proc.wait(timeout)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; idempotent."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # the leader is gone; make sure nothing it forked lingers in its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._forget()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the group at once, as a crash would."""
        proc = self._proc
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._forget()
        return proc.returncode

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
