"""A folder removed when its owner dies, even by SIGKILL.

A test worker that is killed in the middle of its teardown (pytest-xdist gives an interrupted
worker a few seconds, then kills it; a CI runner kills on time-out) never reaches its
``finally``: its processes die with it (``PR_SET_PDEATHSIG``), but a folder it made stays.
:func:`reap_when_gone` starts a tiny watcher, in a session of its own so that a Ctrl-C meant for
the run does not stop it, which removes the folder once the owner is gone and exits at once
when the folder is removed normally (or when :meth:`Reaper.stop` is called).
"""

from __future__ import annotations

import os
import subprocess  # nosec B404 # argv lists, never a shell
import sys
from pathlib import Path

#: Checks twice a second; ends when the folder is gone, removes it once the owner is gone.
_WATCH = """
import os, shutil, sys, time
owner, folder = int(sys.argv[1]), sys.argv[2]
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie owner is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
while os.path.isdir(folder):
    if not alive(owner):
        time.sleep(1.0)  # let the owner's own children finish dying first
        shutil.rmtree(folder, ignore_errors=True)
        break
    time.sleep(0.5)
"""


class Reaper:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    def stop(self) -> None:
        """The owner cleaned up itself: the watcher is not needed any more."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def reap_when_gone(folder: Path, owner: int | None = None) -> Reaper:
    """Remove ``folder`` when process ``owner`` (default: this one) is gone."""
    process = subprocess.Popen(  # nosec B603 # argv of our own, no shell
        [sys.executable, "-c", _WATCH, str(owner or os.getpid()), str(folder)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    return Reaper(process)
