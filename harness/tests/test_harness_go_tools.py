"""Go tools built into the harness's cache (pet_harness.go_tools): where they go, and what an
unknown name or a failed build says. The real build runs in `ci/tox -e scan` (actionlint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pet_harness import go_tools
from pet_harness.binaries import BinaryError


def test_a_tool_is_cached_per_version_under_the_harness_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PET_HARNESS_CACHE", str(tmp_path))
    spec = go_tools.TOOLS["actionlint"]
    assert go_tools.cache_path("actionlint") == tmp_path / "tools" / f"actionlint-{spec.version}" / "actionlint"


def test_an_unknown_tool_is_refused_with_the_known_ones() -> None:
    with pytest.raises(BinaryError, match=r"unknown Go tool 'shellcheck': known ones are actionlint"):
        go_tools.cache_path("shellcheck")


def test_a_cached_tool_is_used_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PET_HARNESS_CACHE", str(tmp_path))
    path = go_tools.cache_path("actionlint")
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    monkeypatch.setattr(go_tools, "build", lambda name, say=True: pytest.fail("built although cached"))
    assert go_tools.ensure("actionlint") == path


def test_a_failed_build_names_the_module_and_shows_go_s_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PET_HARNESS_CACHE", str(tmp_path))
    fake_go = tmp_path / "go"
    fake_go.write_text("#!/bin/sh\necho 'go: module lookup disabled' >&2\nexit 1\n")
    fake_go.chmod(0o755)
    monkeypatch.setattr(go_tools, "go_executable", lambda: str(fake_go))
    with pytest.raises(BinaryError, match=r"building github.com/rhysd/actionlint/cmd/actionlint@v\S+ failed "
                                          r"\(go install exited 1\):\ngo: module lookup disabled"):
        go_tools.build("actionlint", say=False)
    assert not go_tools.cache_path("actionlint").exists()
