"""Leave nothing behind: the node's machine-wide lock, its state file and its teardown.

A node writes outside its work folder whatever its flags say (the kubelet's device-plugin socket
under ``/var/lib/kubelet``, ``/var/log/containers``, containerd's CNI result cache under
``/var/lib/cni`` and the shims' sockets under ``/run/containerd``), and it changes machine-wide
state: a bridge, iptables chains, conntrack entries, sysctls, cgroups. So:

* one node runs on a machine at a time: :func:`node_lock` takes ``/run/lock/pet-harness-node.lock``
  (an ``flock``, released by the kernel when its holder dies), waiting for a while and then failing
  with a message that names the holder;
* before touching anything, the owner writes :data:`STATE_FILE` (``/run/pet-harness-node.json``):
  its pid, its folders, the bridge and ranges, the sysctls and host paths as they were;
* :func:`teardown` undoes all of it from that record, and is the same code whether the owner
  stops normally, fails half-way, or died and a watcher (:func:`watch`) or the next start
  (:func:`sweep_stale`) cleans up after it.

Run as ``python -m pet_harness.clusters.node_teardown --watch PID`` it is that watcher: it waits
for the owner to end and tears its node down if the owner did not.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import subprocess  # nosec B404 # argv lists, never a shell
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pet_harness.clusters import node_network
from pet_harness.clusters.base import ClusterError
from pet_harness.file_lock import exclusive_lock
from pet_harness.processes import pid_alive

LOCK_FILE = Path("/run/lock/pet-harness-node.lock")
STATE_FILE = Path("/run/pet-harness-node.json")

#: host paths a node's components write whatever their flags say (checked before and after)
HOST_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/usr/libexec/kubernetes",
    "/etc/cni",
    "/opt/cni",
    "/var/lib/containerd",
    "/etc/kubernetes",
)

#: the kubelet's cgroup for pods (cgroupfs driver, no cgroupRoot): under every hierarchy
CGROUP_NAME = "kubepods"
CGROUP_ROOT = Path("/sys/fs/cgroup")

#: the chains kube-proxy, the kubelet and the CNI plugins make
KUBE_CHAIN_PREFIXES = ("KUBE-", "CNI-")

Say = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


# --- the lock --------------------------------------------------------------------------------------

#: the environment variable that sets how long a node cluster waits for the machine's lock
LOCK_TIMEOUT_ENV = "PET_NODE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 300.0


def lock_timeout_from_env() -> float:
    """``$PET_NODE_LOCK_TIMEOUT`` seconds (a number >= 0), else 300."""
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise ClusterError(f"{LOCK_TIMEOUT_ENV}={text!r}: expected a number of seconds >= 0")
    return value



@contextlib.contextmanager
def node_lock(timeout: float, say: Say = _quiet, lock_file: Path = LOCK_FILE) -> Iterator[int]:
    """Hold the machine's node lock: wait up to ``timeout`` seconds, then fail naming the holder."""

    def waiting() -> None:
        holder = read_state()
        say(f"waiting for the node cluster of pid {holder.get('owner_pid', '?')} to end (up to {timeout:.0f}s)")

    def too_long() -> Exception:
        holder = read_state()
        return ClusterError(
            f"another node cluster holds {lock_file} (owner pid {holder.get('owner_pid', '?')}, "
            f"work folder {holder.get('workdir', '?')}): only one runs on a machine at a time, "
            "because the kubelet and containerd write the same host paths whatever their flags "
            f"say. Waited {timeout:.0f}s; stop the other one (`pet-harness cluster down`) or wait")

    with exclusive_lock(lock_file, timeout, waiting, too_long) as fd:
        yield fd


# --- the state record ---------------------------------------------------------------------------


def read_state(path: Path | None = None) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((path or STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data


def write_state(state: dict[str, Any], path: Path | None = None) -> None:
    path = path or STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2)
    tmp.replace(path)


def process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot), to tell a reused pid from the owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_alive(state: dict[str, Any]) -> bool:
    pid = int(state.get("owner_pid") or 0)
    if not pid or not pid_alive(pid):
        return False
    started = process_start_time(pid)
    if started is not None and state.get("owner_start") not in (None, started):
        return False  # the pid is someone else's now
    with contextlib.suppress(OSError):  # a zombie owner is gone for our purpose
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


# --- host paths -------------------------------------------------------------------------------------


def snapshot_paths(paths: tuple[str, ...] = HOST_PATHS, limit: int = 20000) -> dict[str, list[str] | None]:
    """For each path: None if absent, else every entry below it (relative), to tell ours apart later."""
    out: dict[str, list[str] | None] = {}
    for top in paths:
        if not os.path.lexists(top):
            out[top] = None
            continue
        entries: list[str] = []
        for folder, dirs, files in os.walk(top):
            for name in dirs + files:
                entries.append(os.path.relpath(os.path.join(folder, name), top))
            if len(entries) > limit:
                break
        out[top] = sorted(entries)
    return out


def clean_paths(before: dict[str, list[str] | None]) -> list[str]:
    """Remove what appeared under each host path since ``before`` (the whole path if it was absent)."""
    removed = []
    for top, entries in before.items():
        if not os.path.lexists(top):
            continue
        if entries is None:
            _remove(top)
            removed.append(top)
            continue
        known = set(entries)
        new = []
        for folder, dirs, files in os.walk(top):
            for name in dirs + files:
                rel = os.path.relpath(os.path.join(folder, name), top)
                if rel not in known:
                    new.append(rel)
        gone: set[str] = set()
        for rel in sorted(new, key=lambda r: r.count("/")):  # a new folder goes with its content
            if any(rel.startswith(g + "/") for g in gone):
                continue
            _remove(os.path.join(top, rel))
            gone.add(rel)
            removed.append(os.path.join(top, rel))
    return removed


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --- mounts -----------------------------------------------------------------------------------------

_MNT_DETACH = 2


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 1 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(prefixes: list[str], mountinfo: str | None = None) -> list[str]:
    """Mount points at or below one of ``prefixes``, deepest first."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    points = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
            points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def unmount_under(prefixes: list[str]) -> int:
    """Lazily unmount everything at or below ``prefixes`` (repeated: mounts may be stacked)."""
    libc = ctypes.CDLL(None, use_errno=True)
    count = 0
    for _ in range(10):
        points = mounts_under(prefixes)
        if not points:
            break
        for point in points:
            if libc.umount2(point.encode(), _MNT_DETACH) == 0:
                count += 1
            elif ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
                continue
    return count


# --- processes and cgroups --------------------------------------------------------------------------


def processes_mentioning(needle: str, exclude: set[int] | None = None) -> list[int]:
    """Pids whose command line contains ``needle`` (a unique work-folder path or socket)."""
    skip = {os.getpid(), *(exclude or set())}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def kill_pids(pids: list[int], wait: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def cgroup_dirs(name: str = CGROUP_NAME, root: Path = CGROUP_ROOT) -> list[Path]:
    """Every cgroup folder at or below ``name`` in every hierarchy, deepest first."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    tops = [root / name] if (root / "cgroup.procs").exists() else [h / name for h in root.iterdir() if h.is_dir()]
    for top in tops:
        if not top.is_dir():
            continue
        for folder, _, _ in os.walk(top):
            found.append(Path(folder))
    return sorted(found, key=lambda p: -len(p.parts))


def cgroup_pids(folders: list[Path]) -> list[int]:
    pids: set[int] = set()
    for folder in folders:
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in (folder / "cgroup.procs").read_text().split())
    return sorted(pids)


def kill_cgroup_processes(name: str = CGROUP_NAME, root: Path = CGROUP_ROOT) -> int:
    """SIGKILL every process in the pods' cgroups (thawing frozen ones first)."""
    folders = cgroup_dirs(name, root)
    for folder in folders:
        state = folder / "freezer.state"
        if state.exists():
            with contextlib.suppress(OSError):
                state.write_text("THAWED")
        with contextlib.suppress(OSError):
            if (folder / "cgroup.freeze").exists():
                (folder / "cgroup.freeze").write_text("0")
    pids = cgroup_pids(folders)
    kill_pids(pids)
    return len(pids)


def remove_cgroups(name: str = CGROUP_NAME, root: Path = CGROUP_ROOT, wait: float = 5.0) -> list[str]:
    """rmdir the pods' cgroups, deepest first; returns those that would not go."""
    deadline = time.monotonic() + wait
    left: list[Path] = []
    while True:
        left = []
        for folder in cgroup_dirs(name, root):
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(folder)
        if not left or time.monotonic() >= deadline:
            break
        kill_pids(cgroup_pids(left), wait=1)
        time.sleep(0.1)
    return [str(p) for p in left]


# --- the whole teardown -------------------------------------------------------------------------------


def teardown(state: dict[str, Any], say: Say = _quiet) -> list[str]:
    """Undo everything the node recorded in ``state`` changed; returns what was still there.

    Processes the owner manages are stopped by it before this (normal exit); here, for a dead
    owner, anything whose command line names the work folder is killed as well.
    """
    report: list[str] = []
    workdir = str(state.get("workdir") or "")
    bridge = str(state.get("bridge") or "")
    pod_cidr, service_cidr = str(state.get("pod_cidr") or ""), str(state.get("service_cidr") or "")
    killed = kill_cgroup_processes()
    if killed:
        report.append(f"{killed} container processes killed")
    if workdir and len(workdir) > 8:
        pids = processes_mentioning(workdir)
        if pids:
            report.append(f"{len(pids)} leftover processes of {workdir} killed (shims, components)")
            kill_pids(pids)
    proxy = state.get("kube_proxy")
    if proxy and os.path.exists(proxy):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([proxy, "--cleanup"], capture_output=True, timeout=60)  # nosec B603 # argv of our own, no shell
    before_chains = {tuple(c) for c in state.get("chains_before", [])}
    chains = [c for c in node_network.chains_with_prefix(KUBE_CHAIN_PREFIXES) if c not in before_chains]
    if chains:
        report.append(f"{len(chains)} KUBE-/CNI- chains removed")
        node_network.remove_chains(chains)
    node_network.remove_guard()
    tables = node_network.remove_new_empty_tables({tuple(t) for t in state.get("nft_tables_before", [])})
    if tables:
        report.append(f"empty nft tables removed: {', '.join(tables)}")
    host_paths = list((state.get("host_paths_before") or {}).keys())
    unmounted = unmount_under([p for p in [workdir, *host_paths] if p])
    if unmounted:
        report.append(f"{unmounted} mounts removed")
    if bridge:
        links = node_network.remove_bridge(bridge)
        if links:
            report.append(f"links removed: {', '.join(links)}")
    if pod_cidr and service_cidr:
        node_network.clear_conntrack(pod_cidr, service_cidr)
    changed = node_network.restore_sysctls(state.get("sysctls") or {})
    if changed:
        report.append(f"sysctls restored: {'; '.join(changed)}")
    stuck = remove_cgroups()
    if stuck:
        report.append(f"cgroups that would not go: {', '.join(stuck)}")
    removed = clean_paths(state.get("host_paths_before") or {})
    if removed:
        report.append(f"host paths removed: {', '.join(removed)}")
    if state.get("remove_workdir") and workdir and os.path.isdir(workdir):
        shutil.rmtree(workdir, ignore_errors=True)
    for line in report:
        say(f"node teardown: {line}")
    return report


def machine_snapshot() -> dict[str, Any]:
    """What a node may change, as it is now: compare with :func:`leftovers` after a teardown."""
    return {
        "sysctls": node_network.record_sysctls(),
        "nft_tables": sorted(node_network.nft_tables()),
        "chains": sorted(node_network.chains_with_prefix(KUBE_CHAIN_PREFIXES)),
        "host_paths": snapshot_paths(),
    }


def leftovers(before: dict[str, Any], workdir: str, bridge: str, pod_cidr: str, service_cidr: str) -> list[str]:
    """Everything a node left that was not there in ``before`` (a :func:`machine_snapshot`): its
    processes, mounts, links, chains, nft tables, cgroups, conntrack entries, host paths, sysctls,
    work folder and state file. Empty when the teardown left nothing."""
    left = []
    pids = [pid for pid in processes_mentioning(workdir) if _running(pid)] if workdir else []
    if pids:  # the components, and the shims (their -address is the node's containerd socket)
        left.append(f"processes naming {workdir}: {pids}")
    in_cgroups = cgroup_pids(cgroup_dirs())
    if in_cgroups:
        left.append(f"processes in the pods' cgroups: {in_cgroups}")
    folders = cgroup_dirs()
    if folders:
        left.append(f"cgroups: {[str(f) for f in folders[:5]]}")
    mounts = mounts_under([workdir, *before.get("host_paths", {}).keys()]) if workdir else []
    if mounts:
        left.append(f"mounts: {mounts[:5]}")
    if node_network.link_exists(bridge):
        left.append(f"link {bridge} with ports {node_network.bridge_ports(bridge)}")
    chains = sorted(set(node_network.chains_with_prefix([*KUBE_CHAIN_PREFIXES, node_network.GUARD_CHAIN]))
                    - {tuple(c) for c in before.get("chains", [])})
    if chains:
        left.append(f"iptables chains: {chains}")
    tables = sorted(node_network.nft_tables() - {tuple(t) for t in before.get("nft_tables", [])})
    if tables:
        left.append(f"nft tables: {tables}")
    entries = node_network.conntrack_entries(pod_cidr, service_cidr)
    if entries:
        left.append(f"conntrack entries: {entries[:3]}")
    now = snapshot_paths(tuple(before.get("host_paths", {}).keys()))
    changed_paths = [path for path, entries_before in before.get("host_paths", {}).items()
                     if now.get(path) != entries_before]
    if changed_paths:
        left.append(f"host paths changed: {changed_paths}")
    sysctls = {name: value for name, value in node_network.record_sysctls().items()
               if before.get("sysctls", {}).get(name, value).split() != value.split()}
    if sysctls:
        left.append(f"sysctls changed: {sysctls}")
    if workdir and os.path.exists(workdir):
        left.append(f"work folder {workdir}")
    if STATE_FILE.exists():
        left.append(f"state file {STATE_FILE}")
    return left


def sweep_stale(say: Say = _quiet) -> list[str]:
    """With the lock held: tear down a node whose owner is gone (SIGKILLed before its teardown)."""
    state = read_state()
    if not state or owner_alive(state):
        return []
    say(f"sweeping the node left by pid {state.get('owner_pid')} ({state.get('workdir')})")
    report = teardown({**state, "remove_workdir": True}, say)
    STATE_FILE.unlink(missing_ok=True)
    return report


def watch(owner: int, poll: float = 0.5, lock_timeout: float = 120) -> int:
    """Wait for ``owner`` to end; if its node is still recorded then, tear it down."""
    while True:
        state = read_state()
        if not state or int(state.get("owner_pid") or 0) != owner:
            return 0  # torn down normally (or never recorded)
        if not owner_alive(state):
            break
        time.sleep(poll)
    time.sleep(1.0)  # let the owner's children finish dying first
    with node_lock(lock_timeout):
        sweep_stale()
    return 0


def start_watcher(owner: int) -> subprocess.Popen[bytes]:
    """The watcher, in a session of its own so that a Ctrl-C meant for the run does not stop it."""
    return subprocess.Popen(  # nosec B603 # argv of our own, no shell
        [sys.executable, "-m", "pet_harness.clusters.node_teardown", "--watch", str(owner)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--watch":
        sys.exit(watch(int(sys.argv[2])))
    print("usage: python -m pet_harness.clusters.node_teardown --watch PID", file=sys.stderr)
    sys.exit(2)
