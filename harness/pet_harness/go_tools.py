"""Developer tools that are Go commands (``actionlint``), built from their Go modules at a pinned
version into the harness's cache, like the control-plane binaries (``pet_harness.binaries``):

    ~/.cache/pet-harness/tools/<name>-<version>/<name>

``go install MODULE/cmd/NAME@VERSION`` builds it with the module's own go.mod (no throwaway module
needed). ``python -m pet_harness.go_tools path NAME`` prints the path, building it first if the
cache has none; ``python -m pet_harness.go_tools run NAME ARGS...`` runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess  # nosec B404 # argv lists, never a shell
import sys
import tempfile
import time
from pathlib import Path

from pet_harness.binaries import BinaryError, cache_root, go_executable


@dataclasses.dataclass(frozen=True)
class GoTool:
    name: str
    package: str  #: the Go package of the command
    version: str  #: the module version, as the Go module proxy serves it

    @property
    def ref(self) -> str:
        return f"{self.package}@{self.version}"


#: the tools and their pinned versions: the one place to change one
TOOLS = {
    "actionlint": GoTool("actionlint", "github.com/rhysd/actionlint/cmd/actionlint", "v1.7.12"),
}


def tool(name: str) -> GoTool:
    try:
        return TOOLS[name]
    except KeyError:
        raise BinaryError(f"unknown Go tool {name!r}: known ones are {', '.join(sorted(TOOLS))}") from None


def cache_path(name: str) -> Path:
    spec = tool(name)
    return cache_root() / "tools" / f"{spec.name}-{spec.version}" / spec.name


def build(name: str, say: bool = True) -> Path:
    """``go install`` the tool into its cache folder (an existing build is replaced); its path."""
    spec = tool(name)
    target = cache_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env.pop("GOFLAGS", None)  # `go install pkg@version` refuses -mod=mod
    started = time.monotonic()
    if say:
        print(f"go_tools: building {spec.ref} into {target.parent} (once; cached)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=f"pet-harness-{spec.name}-") as gobin:
        env["GOBIN"] = gobin  # installed here first, then moved: never a half-written binary in the cache
        proc = subprocess.run(  # nosec B603 # argv of our own, no shell
            [go_executable(), "install", "-trimpath", spec.ref], env=env, cwd=gobin,
            capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise BinaryError(f"building {spec.ref} failed (go install exited {proc.returncode}):\n{tail}")
        os.replace(Path(gobin) / spec.name, target)
    if say:
        print(f"go_tools: {spec.name} built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return target


def ensure(name: str, say: bool = True) -> Path:
    """The cached tool, built first if the cache has none."""
    path = cache_path(name)
    if path.is_file() and os.access(path, os.X_OK):
        return path
    return build(name, say=say)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pet_harness.go_tools", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    path_cmd = sub.add_parser("path", help="print the tool's path, building it first if needed")
    path_cmd.add_argument("name", choices=sorted(TOOLS))
    run_cmd = sub.add_parser("run", help="run the tool (built first if needed) with the arguments that follow")
    run_cmd.add_argument("name", choices=sorted(TOOLS))
    run_cmd.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        path = ensure(args.name)
    except BinaryError as exc:
        print(f"go_tools: error: {exc}", file=sys.stderr)
        return 1
    if args.command == "path":
        print(path)
        return 0
    return subprocess.run([str(path), *args.args], check=False).returncode  # nosec B603 # argv of our own, no shell


if __name__ == "__main__":
    sys.exit(main())
