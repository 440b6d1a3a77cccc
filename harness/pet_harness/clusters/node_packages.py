"""The Debian packages a cluster with a node needs, and the check that they are there.

Each package is recognised by the files it installs (an executable looked up on ``PATH`` and in the
sbin folders, which a non-root ``PATH`` often lacks, or an absolute path), so the check works the
same whether the package came from apt or the tool was put there by other means. ``.ci/run``
installs them on a fresh machine of the project's kind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from pet_harness.clusters.base import ClusterError

#: package -> what proves it is installed: bare names are executables, absolute paths are files.
REQUIRED_PACKAGES: dict[str, tuple[str, ...]] = {
    "containerd": ("containerd", "ctr", "containerd-shim-runc-v2"),
    "runc": ("runc",),
    "containernetworking-plugins": ("/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"),
    "iptables": ("iptables", "ip6tables"),
    "nftables": ("nft",),
    "conntrack": ("conntrack",),
    "socat": ("socat",),
    "ebtables": ("ebtables",),
    "ipset": ("ipset",),
    "mmdebstrap": ("mmdebstrap",),
    "tini": ("tini",),
}

#: where root's tools live when the caller's ``PATH`` leaves them out
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")

Which = Callable[[str], str | None]


def find_tool(name: str, which: Which | None = None) -> str | None:
    """The path of executable ``name`` on ``PATH`` or in the sbin folders, or None."""
    look = which or shutil.which
    found = look(name)
    if found:
        return found
    for folder in _SBIN:
        candidate = os.path.join(folder, name)
        if look(candidate):
            return candidate
    return None


def tool(name: str) -> str:
    """The path of ``name``, or an error naming the package that installs it."""
    found = find_tool(name)
    if found is None:
        owner = next((pkg for pkg, files in REQUIRED_PACKAGES.items() if name in files), name)
        raise ClusterError(f"{name} is not installed: apt-get install {owner}")
    return found


def missing_packages(
    packages: dict[str, tuple[str, ...]] | None = None,
    which: Which | None = None,
    exists: Callable[[str], bool] | None = None,
) -> list[str]:
    """The packages (of ``packages``, default :data:`REQUIRED_PACKAGES`) with a file missing."""
    is_file = exists or (lambda path: Path(path).is_file())
    missing = []
    for package, files in (packages or REQUIRED_PACKAGES).items():
        for item in files:
            present = is_file(item) if item.startswith("/") else find_tool(item, which) is not None
            if not present:
                missing.append(package)
                break
    return missing


def check_packages(missing: Sequence[str] | None = None) -> None:
    """Raise :class:`ClusterError` naming every missing package and the command that installs them."""
    gone = list(missing_packages() if missing is None else missing)
    if gone:
        raise ClusterError(
            f"a cluster with a node needs Debian packages that are not installed: {', '.join(gone)}. "
            f"Install them with: apt-get install {' '.join(gone)} (.ci/run does it on a fresh machine)"
        )
