"""What takes the space in a container image: its size (stored, gzip as a registry would hold it,
uncompressed), each layer with the Dockerfile step that made it, and the root filesystem split by
owner: top-level folders, the Python standard library, each Python distribution of each
site-packages folder (by its ``RECORD``), each Debian package (by dpkg's ``info/*.list``) and the
biggest files. Read from the image's OCI tar (:mod:`pet_harness.oci_image`), nothing run.

    python -m pet_harness.image_report IMAGE.tar [--out DIR]   # DIR/image-report.{md,json}
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from pet_harness.oci_image import FileEntry, OciImage, resolve_parent

STDLIB = re.compile(r"^/usr(?:/local)?/lib/python3\.\d+/")
SITE = re.compile(r"^(?P<site>.*/(?:site|dist)-packages)/")
DPKG_LIST = re.compile(r"^/var/lib/dpkg/info/(?P<pkg>[^/]+)\.list$")
RECORD = re.compile(r"^(?P<site>.*/(?:site|dist)-packages)/(?P<dist>[^/]+)\.dist-info/RECORD$")


def _dist_name(folder: str) -> str:
    """``kopf-1.37.2.dist-info`` -> ``kopf``."""
    return folder.rsplit("-", 1)[0] if "-" in folder else folder


def metadata_files(path: str) -> bool:
    """The files the report (and the SBOM) read from the image."""
    return bool(DPKG_LIST.match(path) or RECORD.match(path))


def site_owners(files: Mapping[str, FileEntry], records: Mapping[str, bytes]) -> dict[str, str]:
    """Each file under a site-packages folder -> its distribution: the RECORD names it, or (for
    files made after the install, such as recompiled bytecode) the distribution owning another
    file of its top-level package folder."""
    owner: dict[str, str] = {}
    top_owner: dict[str, str] = {}
    for record_path, data in records.items():
        found = RECORD.match(record_path)
        if found is None:
            continue
        site, dist = found["site"], _dist_name(found["dist"])
        for line in data.decode("utf-8", "replace").splitlines():
            rel = line.rsplit(",", 2)[0] if line.count(",") >= 2 else line
            if not rel:
                continue
            path = str(PurePosixPath(site, rel))
            if ".." in PurePosixPath(rel).parts:  # console scripts in bin/ and the like
                path = "/" + "/".join(_resolve(PurePosixPath(site, rel).parts[1:]))
            owner[path] = dist
            first = PurePosixPath(rel).parts[0]
            if first != ".." and not first.endswith(".dist-info"):
                top_owner.setdefault(f"{site}/{first}", dist)
        top_owner[f"{site}/{found['dist']}.dist-info"] = dist
    for path in files:
        if path in owner:
            continue
        site_match = SITE.match(path)
        if site_match:
            rel = path[len(site_match["site"]) + 1:]
            first = rel.split("/", 1)[0]
            if first == "__pycache__":  # a top-level module's bytecode: the owner of MODULE.py
                first = rel.rsplit("/", 1)[-1].split(".", 1)[0] + ".py"
            found_owner = top_owner.get(f"{site_match['site']}/{first}")
            if found_owner:
                owner[path] = found_owner
    return owner


def _resolve(parts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            if out:
                out.pop()
        elif part not in (".", ""):
            out.append(part)
    return out


def dpkg_owners(lists: Mapping[str, bytes], files: dict[str, FileEntry] | None = None) -> dict[str, str]:
    """Each path a Debian package installed -> the package (its folders' symlinks followed in
    ``files``, the image's filesystem: merged /usr)."""
    owner: dict[str, str] = {}
    for list_path, data in sorted(lists.items()):
        found = DPKG_LIST.match(list_path)
        if found is None:
            continue
        package = found["pkg"].split(":", 1)[0]
        for line in data.decode("utf-8", "replace").splitlines():
            if line and line != "/.":
                owner.setdefault(resolve_parent(line, files) if files else line, package)
    return owner


def breakdown(image: OciImage, top: int = 15) -> dict[str, Any]:
    """The report's figures as a dictionary (see :func:`render_markdown`)."""
    files = image.filesystem()
    meta = image.read_files(match=metadata_files)
    sizes = {p: e.size for p, e in files.items() if e.kind == "file"}
    total = sum(sizes.values())

    layers = []
    for layer in image.layers:
        uncompressed, gzip_size = image.layer_sizes(layer)
        in_final = sum(e.size for e in files.values() if e.layer == layer.index and e.kind == "file")
        layers.append({"index": layer.index, "step": layer.created_by, "digest": layer.digest,
                       "stored": layer.stored_size, "compression": layer.compression,
                       "uncompressed": uncompressed, "gzip": gzip_size, "file_bytes_in_final": in_final})

    top_dirs: dict[str, int] = defaultdict(int)
    for path, size in sizes.items():
        parts = path.split("/")
        key = "/".join(parts[:3]) if parts[1] in ("usr", "var", "opt") and len(parts) > 3 else "/".join(parts[:2])
        top_dirs[key] += size

    stdlib: dict[str, int] = defaultdict(int)
    for path, size in sizes.items():
        if STDLIB.match(path) and not SITE.match(path):
            rest = STDLIB.sub("", path)
            first = rest.split("/", 1)[0] if "/" in rest else "(modules at the top)"
            stdlib[first] += size
    py_owner = site_owners(files, {p: d for p, d in meta.items() if RECORD.match(p)})
    sites: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for path, size in sizes.items():
        site_match = SITE.match(path)
        if site_match:
            sites[site_match["site"]][py_owner.get(path, "(no RECORD)")] += size
        elif path in py_owner:  # a distribution's files outside site-packages (console scripts)
            site_dirs = [s for s in (m["site"] for m in (RECORD.match(r) for r in meta) if m)]
            if site_dirs:
                sites[min(site_dirs, key=len)][py_owner[path]] += size
    deb_owner = dpkg_owners({p: d for p, d in meta.items() if DPKG_LIST.match(p)}, files)
    debs: dict[str, int] = defaultdict(int)
    for path, size in sizes.items():
        debs[deb_owner.get(path, "(not from a Debian package)")] += size

    def ranked(table: Mapping[str, int], limit: int | None = None) -> list[list[Any]]:
        rows = sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))
        return [[name, size] for name, size in (rows[:limit] if limit else rows)]

    return {
        "reference": image.reference, "platform": image.platform, "manifest": image.manifest_digest,
        "labels": image.labels,
        "size": {"stored": sum(la["stored"] for la in layers), "gzip": sum(la["gzip"] for la in layers),
                 "uncompressed": sum(la["uncompressed"] for la in layers), "file_bytes": total,
                 "files": len(sizes)},
        "layers": layers,
        "top_dirs": ranked(top_dirs, top),
        "python_stdlib": {"bytes": sum(stdlib.values()), "parts": ranked(stdlib, top)},
        "site_packages": {site: {"bytes": sum(d.values()), "distributions": ranked(d)}
                          for site, d in sorted(sites.items())},
        "debian_packages": {"count": len([k for k in debs if not k.startswith("(")]), "packages": ranked(debs, top)},
        "largest_files": ranked(sizes, top),
    }


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} kB"


def render_markdown(report: Mapping[str, Any]) -> str:
    size = report["size"]
    lines = [f"# Image report: `{report['reference']}` ({report['platform']})", "",
             f"Manifest `{report['manifest']}`; version label "
             f"`{report['labels'].get('org.opencontainers.image.version', '-')}`.", "",
             "| size | bytes |", "| --- | --- |",
             f"| gzip layers (what a registry stores and a node pulls) | {_mb(size['gzip'])} |",
             f"| uncompressed layers (what a node unpacks) | {_mb(size['uncompressed'])} |",
             f"| stored in this OCI tar | {_mb(size['stored'])} |",
             f"| files of the final filesystem | {_mb(size['file_bytes'])} in {size['files']} files |", "",
             "## Layers", "", "| # | made by | gzip | uncompressed |", "| --- | --- | --- | --- |"]
    for layer in report["layers"]:
        step = (layer["step"] or "?").replace("|", "/").replace("\n", " ")
        step = step if len(step) <= 110 else step[:107] + "..."
        lines.append(f"| {layer['index']} | `{step}` | {_mb(layer['gzip'])} | {_mb(layer['uncompressed'])} |")

    def table(title: str, header: str, rows: list[list[Any]]) -> None:
        lines.extend(["", f"## {title}", "", f"| {header} | bytes |", "| --- | --- |"])
        lines.extend(f"| {name} | {_mb(size)} |" for name, size in rows)

    table("Top-level folders", "folder", report["top_dirs"])
    std = report["python_stdlib"]
    table(f"Python standard library ({_mb(std['bytes'])})", "part", std["parts"])
    for site, data in report["site_packages"].items():
        table(f"{site} ({_mb(data['bytes'])})", "distribution", data["distributions"])
    debs = report["debian_packages"]
    table(f"Debian packages ({debs['count']} with files in the image; the biggest by those files)", "package",
          debs["packages"])
    table("Largest files", "file", [[f"`{p}`", s] for p, s in report["largest_files"]])
    return "\n".join(lines) + "\n"


def write_report(tar: Path, out: Path, platform: str | None = None) -> dict[str, Any]:
    """``out/image-report.json`` and ``out/image-report.md`` for the image in ``tar``."""
    with OciImage(tar, platform) as image:
        report = breakdown(image)
    out.mkdir(parents=True, exist_ok=True)
    (out / "image-report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "image-report.md").write_text(render_markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="what takes the space in an OCI image tar")
    parser.add_argument("tar", type=Path)
    parser.add_argument("--platform", help="os/arch of a multi-platform image (linux/arm64)")
    parser.add_argument("--out", type=Path, default=Path("results/image"))
    args = parser.parse_args(argv)
    write_report(args.tar, args.out, args.platform)
    print((args.out / "image-report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
