"""node_packages.py: which Debian packages a node cluster needs, and the error naming the missing ones."""

from __future__ import annotations

import pytest

from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node_packages import REQUIRED_PACKAGES, check_packages, find_tool, missing_packages


def _which_from(present: set[str]):  # type: ignore[no-untyped-def]
    return lambda name: name if name in present else None


def test_every_package_of_the_trial_is_required() -> None:
    for package in ("containerd", "runc", "containernetworking-plugins", "iptables", "conntrack", "socat",
                    "ebtables", "ipset", "mmdebstrap", "tini"):
        assert package in REQUIRED_PACKAGES


def test_nothing_missing_when_every_file_is_there() -> None:
    executables = {f for files in REQUIRED_PACKAGES.values() for f in files if not f.startswith("/")}
    assert missing_packages(which=_which_from(executables), exists=lambda path: True) == []


def test_a_package_is_missing_when_one_of_its_files_is() -> None:
    executables = {f for files in REQUIRED_PACKAGES.values() for f in files if not f.startswith("/")}
    executables.discard("containerd-shim-runc-v2")
    missing = missing_packages(which=_which_from(executables), exists=lambda path: not path.endswith("/bridge"))
    assert missing == ["containerd", "containernetworking-plugins"]


def test_tools_in_sbin_are_found_without_sbin_on_path() -> None:
    assert find_tool("conntrack", _which_from({"/usr/sbin/conntrack"})) == "/usr/sbin/conntrack"
    assert find_tool("conntrack", _which_from(set())) is None


def test_the_error_names_each_missing_package_and_the_install_command() -> None:
    with pytest.raises(ClusterError) as info:
        check_packages(["runc", "tini"])
    message = str(info.value)
    assert "not installed: runc, tini" in message
    assert "apt-get install runc tini" in message


def test_no_error_when_nothing_is_missing() -> None:
    check_packages([])
