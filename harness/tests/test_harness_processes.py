"""processes.py: managed child processes with real, short-lived shells and sleeps."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pet_harness import processes
from pet_harness.processes import ManagedProcess, ProcessError

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and prctl")


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None when there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data.rsplit(")", 1)[1].split()[0]


def _gone(pid: int) -> bool:
    # an orphan may linger as a zombie if PID 1 does not reap; a zombie runs nothing
    return _proc_state(pid) in (None, "Z", "X")


def _poll(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _ignores(pid: int, sig: int) -> bool:
    """Whether the process ignores ``sig`` (the SigIgn mask in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def _read_pid(path: Path) -> int:
    _poll(lambda: path.is_file() and path.read_text().strip().isdigit(), f"a pid in {path}")
    return int(path.read_text())


def _force_kill(pid: int) -> None:
    if not _gone(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


Spawn = Callable[..., ManagedProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Make ManagedProcesses logging under tmp_path; whatever a test leaves running is killed."""
    made: list[ManagedProcess] = []

    def _spawn(name: str, argv: list[str], **kwargs: object) -> ManagedProcess:
        proc = ManagedProcess(name, argv, tmp_path / "logs" / f"{name}.log", **kwargs)  # type: ignore[arg-type]
        made.append(proc)
        return proc

    yield _spawn
    for proc in made:
        if proc in processes.live_processes():
            proc.kill()


@pytest.fixture
def grandchildren() -> Iterator[list[int]]:
    """Pids of processes a test's children forked; killed at teardown if still there."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        _force_kill(pid)


# --- start, log, identity ---------------------------------------------------------------


@linux_only
def test_runs_in_its_own_session_and_process_group(spawn: Spawn) -> None:
    proc = spawn("sleeper", ["sleep", "30"]).start()
    pid = proc.pid
    assert pid is not None
    assert proc.running
    assert proc.returncode is None
    assert os.getpgid(pid) == pid
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) != os.getpgid(0)
    assert proc in processes.live_processes()
    assert repr(proc) == f"<ManagedProcess sleeper pid={pid}>"

    assert proc.stop(grace=5) == -signal.SIGTERM
    assert not proc.running
    assert proc.returncode == -signal.SIGTERM
    assert proc not in processes.live_processes()
    assert _gone(pid)


def test_output_env_and_cwd(spawn: Spawn, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = spawn(
        "shell",
        ["sh", "-c", 'echo "FOO=$FOO"; pwd; echo to-stderr >&2'],
        env={"FOO": "bar", "PATH": os.environ["PATH"]},
        cwd=workdir,
    )
    assert proc.log_text() == ""  # nothing written before start
    proc.start()
    assert proc.wait(5) == 0
    assert proc.log_path == tmp_path / "logs" / "shell.log"  # the log folder is created
    text = proc.log_text()
    assert text.startswith("--- ")
    assert "starting: sh -c" in text
    assert "FOO=bar\n" in text
    assert f"{workdir}\n" in text
    assert "to-stderr\n" in text
    assert proc.stop() == 0
    assert proc not in processes.live_processes()


def test_env_is_copied(spawn: Spawn) -> None:
    env = {"A": "1"}
    proc = spawn("copy", ["true"], env=env)
    env["A"] = "2"
    assert proc.env == {"A": "1"}


def test_restart_appends_to_the_same_log(spawn: Spawn) -> None:
    proc = spawn("twice", ["sh", "-c", "echo run"])
    for _ in range(2):
        proc.start()
        assert proc.wait(5) == 0
        proc.stop()
    text = proc.log_text()
    assert text.count("starting: sh -c echo run") == 2
    assert text.count("\nrun\n") == 2


def test_start_while_running_is_refused(spawn: Spawn) -> None:
    proc = spawn("once", ["sleep", "30"]).start()
    with pytest.raises(ProcessError, match=rf"once is already running \(pid {proc.pid}\)"):
        proc.start()
    proc.stop(grace=5)


def test_start_of_a_missing_program_fails_cleanly(spawn: Spawn, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")
    proc = spawn("ghost", [missing])
    with pytest.raises(ProcessError, match="cannot start ghost") as info:
        proc.start()
    assert missing in str(info.value)
    assert not proc.running
    assert proc not in processes.live_processes()
    assert proc._log is not None
    assert proc._log.closed


def test_never_started() -> None:
    proc = ManagedProcess("idle", ["true"], Path("/nonexistent/idle.log"))
    assert proc.pid is None
    assert not proc.running
    assert proc.returncode is None
    assert proc.stop() is None
    assert proc.kill() is None
    assert proc.log_text() == ""
    with pytest.raises(ProcessError, match="idle was never started"):
        proc.wait()
    with pytest.raises(ProcessError, match="idle is not running"):
        proc.signal(signal.SIGTERM)


def test_log_text_cuts_the_beginning(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"a" * 100 + b"the end")
    proc = ManagedProcess("big", ["true"], log)
    assert proc.log_text(max_bytes=7) == "[... earlier output cut ...]\nthe end"
    assert proc.log_text() == "a" * 100 + "the end"


def test_log_text_replaces_undecodable_bytes(tmp_path: Path) -> None:
    log = tmp_path / "bin.log"
    log.write_bytes(b"ok \xff\xfe")
    assert ManagedProcess("bin", ["true"], log).log_text() == "ok \ufffd\ufffd"


# --- stop, kill, signal -----------------------------------------------------------------


@linux_only
def test_stop_escalates_to_sigkill_after_grace(spawn: Spawn) -> None:
    proc = spawn("stubborn", ["sh", "-c", 'trap "" TERM; exec sleep 30']).start()
    pid = proc.pid
    assert pid is not None
    _poll(lambda: _ignores(pid, signal.SIGTERM), "the TERM trap to be set")
    started = time.monotonic()
    assert proc.stop(grace=0.3) == -signal.SIGKILL
    elapsed = time.monotonic() - started
    assert elapsed >= 0.3, "SIGKILL came before the grace period ended"
    assert elapsed < 5
    assert _gone(pid)
    assert proc not in processes.live_processes()


@linux_only
def test_stop_kills_a_grandchild_that_ignores_sigterm(spawn: Spawn, tmp_path: Path, grandchildren: list[int]) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = '(trap "" TERM; exec sleep 30) & echo $! > "$0"; wait'
    proc = spawn("forker", ["sh", "-c", script, str(pidfile)]).start()
    grandchild = _read_pid(pidfile)
    grandchildren.append(grandchild)
    _poll(lambda: _ignores(grandchild, signal.SIGTERM), "the grandchild's TERM trap")
    assert os.getpgid(grandchild) == proc.pid

    started = time.monotonic()
    assert proc.stop(grace=5) == -signal.SIGTERM  # the leader obeyed SIGTERM: no escalation
    assert time.monotonic() - started < 4
    _poll(lambda: _gone(grandchild), "the grandchild to be killed with the group")


@linux_only
def test_kill_takes_the_whole_group_at_once(spawn: Spawn, tmp_path: Path, grandchildren: list[int]) -> None:
    pidfile = tmp_path / "grandchild.pid"
    proc = spawn("crash", ["sh", "-c", 'sleep 30 & echo $! > "$0"; wait', str(pidfile)]).start()
    grandchild = _read_pid(pidfile)
    grandchildren.append(grandchild)
    leader = proc.pid
    assert leader is not None
    assert proc.kill() == -signal.SIGKILL
    assert _gone(leader)
    _poll(lambda: _gone(grandchild), "the grandchild to die with the group")
    assert proc not in processes.live_processes()


@linux_only
def test_sigstop_freezes_the_group_and_stop_still_works(
    spawn: Spawn, tmp_path: Path, grandchildren: list[int]
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    proc = spawn("frozen", ["sh", "-c", 'sleep 30 & echo $! > "$0"; wait', str(pidfile)]).start()
    grandchild = _read_pid(pidfile)
    grandchildren.append(grandchild)
    leader = proc.pid
    assert leader is not None
    proc.signal(signal.SIGSTOP)
    _poll(lambda: _proc_state(leader) == "T" and _proc_state(grandchild) == "T", "both to be stopped")
    assert proc.running  # frozen is not dead

    started = time.monotonic()
    assert proc.stop(grace=5) == -signal.SIGTERM  # SIGCONT first, so SIGTERM is handled at once
    assert time.monotonic() - started < 4
    _poll(lambda: _gone(grandchild), "the frozen grandchild to be gone")


@linux_only
def test_signal_reaches_the_whole_group(spawn: Spawn, tmp_path: Path, grandchildren: list[int]) -> None:
    pidfile = tmp_path / "grandchild.pid"
    proc = spawn("group", ["sh", "-c", 'sleep 30 & echo $! > "$0"; wait', str(pidfile)]).start()
    grandchild = _read_pid(pidfile)
    grandchildren.append(grandchild)
    proc.signal(signal.SIGTERM)
    assert proc.wait(5) == -signal.SIGTERM
    _poll(lambda: _gone(grandchild), "the grandchild to get SIGTERM too")
    with pytest.raises(ProcessError, match="group is not running"):
        proc.signal(signal.SIGTERM)
    assert proc.stop() == -signal.SIGTERM


def test_stop_is_idempotent(spawn: Spawn) -> None:
    proc = spawn("idem", ["sleep", "30"]).start()
    first = proc.stop(grace=5)
    assert first == -signal.SIGTERM
    assert proc.stop(grace=5) == first
    assert proc.kill() == first


def test_stop_after_the_process_exited_by_itself(spawn: Spawn) -> None:
    proc = spawn("quick", ["sh", "-c", "exit 7"]).start()
    assert proc.wait(5) == 7
    assert proc in processes.live_processes()  # still registered until stopped
    assert proc.stop() == 7
    assert proc not in processes.live_processes()


# --- registry ---------------------------------------------------------------------------


def test_live_processes_are_sorted_by_pid(spawn: Spawn) -> None:
    procs = [spawn(f"p{i}", ["sleep", "30"]).start() for i in range(3)]
    live = processes.live_processes()
    assert set(procs) <= set(live)
    pids = [p.pid or 0 for p in live]
    assert pids == sorted(pids)
    for proc in procs:
        proc.stop(grace=5)
    assert not set(procs) & set(processes.live_processes())


def test_stop_all_stops_everything_newest_first(spawn: Spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    procs = [spawn(f"p{i}", ["sleep", "30"]).start() for i in range(3)]
    order: list[str] = []
    real_stop = ManagedProcess.stop

    def recording_stop(self: ManagedProcess, grace: float = 10.0) -> int | None:
        order.append(self.name)
        return real_stop(self, grace)

    monkeypatch.setattr(ManagedProcess, "stop", recording_stop)
    processes.stop_all(grace=2)
    expected = [p.name for p in sorted(procs, key=lambda p: p.pid or 0, reverse=True)]
    assert order == expected
    assert not any(p.running for p in procs)
    assert processes.live_processes() == []


def test_stop_all_goes_on_when_one_stop_fails(spawn: Spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = spawn("broken", ["sleep", "30"]).start()
    fine = spawn("fine", ["sleep", "30"]).start()

    def failing_stop(grace: float = 10.0) -> int | None:
        raise OSError("cannot stop")

    monkeypatch.setattr(broken, "stop", failing_stop)
    processes.stop_all(grace=2)
    assert not fine.running
    assert broken.running  # its stop failed; the fixture kills it
    assert processes.live_processes() == [broken]


def test_pid_alive() -> None:
    assert processes.pid_alive(os.getpid())
    child = subprocess.Popen(["true"])
    child.wait()
    assert not processes.pid_alive(child.pid)


def test_pid_alive_counts_a_foreign_process_as_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(processes, "os", types.SimpleNamespace(kill=denied))
    assert processes.pid_alive(1)


# --- dying with the harness -------------------------------------------------------------

HARNESS_THEN_SIGKILL = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from pet_harness.processes import ManagedProcess
    proc = ManagedProcess("child", ["sleep", "30"], Path(sys.argv[1]), outlive_parent=sys.argv[2] == "1").start()
    print(proc.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _run_harness(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=30, check=False
    )


@linux_only
def test_children_die_with_a_sigkilled_harness(tmp_path: Path, grandchildren: list[int]) -> None:
    result = _run_harness(HARNESS_THEN_SIGKILL, str(tmp_path / "child.log"), "0")
    assert result.returncode == -signal.SIGKILL, result.stderr
    child = int(result.stdout.split()[0])
    grandchildren.append(child)
    _poll(lambda: _gone(child), "PR_SET_PDEATHSIG to kill the orphan")


@linux_only
def test_outlive_parent_children_survive_the_harness(tmp_path: Path, grandchildren: list[int]) -> None:
    result = _run_harness(HARNESS_THEN_SIGKILL, str(tmp_path / "child.log"), "1")
    assert result.returncode == -signal.SIGKILL, result.stderr
    child = int(result.stdout.split()[0])
    grandchildren.append(child)
    try:
        assert not _gone(child)
        assert os.getpgid(child) == child
    finally:
        os.killpg(child, signal.SIGKILL)
    _poll(lambda: _gone(child), "the surviving child to be cleaned up")


HARNESS_THEN_SIGTERM = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from pet_harness.processes import ManagedProcess, install_signal_handlers
    install_signal_handlers()
    proc = ManagedProcess("child", ["sleep", "30"], Path(sys.argv[1]), outlive_parent=True).start()
    print(proc.pid, flush=True)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(20)
    finally:
        print("finally ran", flush=True)
    """
)


@linux_only
def test_sigterm_runs_finally_and_atexit_stops_children(tmp_path: Path, grandchildren: list[int]) -> None:
    # outlive_parent=True, so only the atexit hook (not PDEATHSIG) can have stopped the child
    started = time.monotonic()
    result = _run_harness(HARNESS_THEN_SIGTERM, str(tmp_path / "child.log"))
    child = int(result.stdout.split()[0])
    grandchildren.append(child)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "finally ran" in result.stdout
    assert time.monotonic() - started < 15
    assert _gone(child)


# --- signal handlers in this interpreter ------------------------------------------------


@pytest.fixture
def saved_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(processes, "_installed", False)
    for sig in saved:
        signal.signal(sig, signal.SIG_DFL)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("saved_signal_handlers")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_install_signal_handlers_turns_signals_into_system_exit(sig: signal.Signals) -> None:
    processes.install_signal_handlers()
    handler = signal.getsignal(sig)
    assert callable(handler)
    with pytest.raises(SystemExit) as info:
        handler(sig, None)
    assert info.value.code == 128 + sig


@pytest.mark.usefixtures("saved_signal_handlers")
def test_install_signal_handlers_keeps_existing_handlers_and_runs_once() -> None:
    def mine(signum: int, frame: object) -> None:
        return None

    signal.signal(signal.SIGHUP, mine)
    processes.install_signal_handlers()
    assert signal.getsignal(signal.SIGHUP) is mine
    assert callable(signal.getsignal(signal.SIGTERM))
    assert processes._installed

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    processes.install_signal_handlers()  # already installed: a no-op
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.usefixtures("saved_signal_handlers")
def test_install_signal_handlers_outside_the_main_thread_does_nothing() -> None:
    thread = threading.Thread(target=processes.install_signal_handlers)
    thread.start()
    thread.join(5)
    assert not processes._installed
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


# --- finding 12: no group signal after the leader is reaped; nothing loaded in the child ----------


@linux_only
def test_the_group_is_never_signalled_once_its_leader_is_reaped(
    spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the leader is reaped its pid, and a group of that number, can be someone else's: every
    killpg must come while the leader is still unreaped (before: stop() sent a last SIGKILL to the
    group after proc.wait(), on every path)."""
    signalled: list[tuple[int, int, bool]] = []  # (pgid, signal, whether the leader was reaped)
    real_killpg = os.killpg

    def killpg(pgid: int, sig: int) -> None:
        try:
            os.waitid(os.P_PID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            reaped = False
        except ChildProcessError:
            reaped = True
        signalled.append((pgid, sig, reaped))
        real_killpg(pgid, sig)

    monkeypatch.setattr(os, "killpg", killpg)
    spawn("stopped", ["sleep", "30"]).start().stop(grace=5)
    spawn("killed", ["sleep", "30"]).start().kill()
    quick = spawn("quick", ["sh", "-c", "exit 3"]).start()
    assert quick.wait(5) == 3
    assert quick.stop() == 3
    exited = spawn("exited", ["sh", "-c", "exit 0"]).start()
    _poll(lambda: not exited.running, "the quick one to be seen exited")
    exited.stop()
    assert signalled, "no group was signalled at all"
    assert [s for s in signalled if s[2]] == []


@linux_only
def test_a_leader_that_exits_by_itself_takes_what_it_left_in_its_group(
    spawn: Spawn, tmp_path: Path, grandchildren: list[int]
) -> None:
    """Seen exited (``running``), its group is SIGKILLed before it is reaped, while that is safe."""
    pid_file = tmp_path / "orphan.pid"
    proc = spawn("leaves", ["sh", "-c", f"sleep 30 & echo $! > {pid_file}; exit 0"]).start()
    orphan = _read_pid(pid_file)
    grandchildren.append(orphan)
    _poll(lambda: not proc.running, "the leader to be seen exited")
    _poll(lambda: _gone(orphan), "what it left in its group to be killed")
    assert proc.returncode == 0


@linux_only
def test_the_death_signal_is_set_with_prctl_resolved_before_the_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading libc in the child of a threaded parent can deadlock: the child only calls the function
    the parent resolved (before: ctypes.CDLL ran in the child)."""
    import ctypes

    calls: list[tuple[int, int]] = []

    def no_loading(*_: object, **__: object) -> None:
        raise AssertionError("a library was loaded between fork and exec")

    monkeypatch.setattr(ctypes, "CDLL", no_loading)
    monkeypatch.setattr(processes, "_PRCTL", lambda option, value: calls.append((option, value)) or 0)
    processes._die_with_parent()
    assert calls == [(1, int(signal.SIGKILL))]
