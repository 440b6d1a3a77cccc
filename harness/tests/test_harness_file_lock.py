"""The bounded exclusive flock that node clusters and image builds share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pet_harness.file_lock import exclusive_lock


def test_a_second_holder_waits_is_told_once_and_gives_up_naming_the_file(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / "x.lock"
    told: list[str] = []
    with exclusive_lock(lock, 1):
        with pytest.raises(TimeoutError, match=r"x.lock is held by another process; waited 0s"), \
                exclusive_lock(lock, 0.3, on_wait=lambda: told.append("waiting"), poll=0.05):
            pass
        assert told == ["waiting"]
    with exclusive_lock(lock, 0.1):
        pass  # free once the first block is left


def test_the_lock_of_a_killed_holder_is_free_again(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="busy"), \
                exclusive_lock(lock, 0.2, on_timeout=lambda: RuntimeError("busy"), poll=0.05):
            pass
    finally:
        holder.kill()
        holder.wait(10)
    with exclusive_lock(lock, 2, poll=0.05):
        pass
