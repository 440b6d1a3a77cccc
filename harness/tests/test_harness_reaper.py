"""reaper: a folder goes when its owner dies, even by SIGKILL; the watcher ends with the folder."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from pet_harness.reaper import reap_when_gone
from pet_harness.waiting import wait_for


def test_the_folder_goes_when_its_owner_is_killed(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "x.log").write_text("x")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reaper = reap_when_gone(folder, owner.pid)
    try:
        assert folder.exists()
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        wait_for(folder.exists, lambda present: not present, 15, "the folder of the killed owner to go")
        wait_for(reaper.process.poll, lambda code: code is not None, 5, "the watcher to end")
    finally:
        owner.kill()
        reaper.stop()


def test_the_watcher_ends_when_the_folder_is_removed_normally(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    reaper = reap_when_gone(folder)
    try:
        assert reaper.process.poll() is None
        folder.rmdir()
        wait_for(reaper.process.poll, lambda code: code is not None, 5, "the watcher to end")
    finally:
        reaper.stop()


def test_stop_ends_the_watcher_and_keeps_the_folder_of_a_live_owner(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    reaper = reap_when_gone(folder)
    reaper.stop()
    assert reaper.process.poll() is not None
    assert folder.exists()
