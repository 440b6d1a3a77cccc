"""A CycloneDX SBOM of a container image, from the image's own contents (its OCI tar, read by
:mod:`pet_harness.oci_image`; nothing is run and nothing is looked up):

* Debian packages from dpkg's database: ``/var/lib/dpkg/status`` (the entries whose status is
  ``installed``) and ``/var/lib/dpkg/status.d/*`` (one entry a file, as distroless images keep
  them);
* Python distributions from every ``site-packages`` or ``dist-packages`` folder: the ``Name`` and
  ``Version`` of each ``*.dist-info/METADATA`` (and ``*.egg-info/PKG-INFO``);
* the distribution of the image from ``/etc/os-release`` (the purls' ``distro`` qualifier).

Package URLs follow the purl specification (github.com/package-url/purl-spec, PURL-TYPES):
``pkg:deb/debian/<name>@<version>?arch=<arch>&distro=debian-<version_id>`` and
``pkg:pypi/<name lowercased, _ as ->@<version>``, versions percent-encoded (``+`` as ``%2B``, an
epoch's ``:`` as ``%3A``). The document is CycloneDX 1.5 JSON (cyclonedx.org/specification); each
component's place in the image is its ``evidence.occurrences``.

    python -m pet_harness.image_sbom IMAGE.tar [-o sbom.cdx.json] [--platform linux/arm64]
"""

from __future__ import annotations

import argparse
import datetime
import email.parser
import json
import re
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pet_harness.oci_image import OciImage, resolve_parent

DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_STATUS_D = re.compile(r"^/var/lib/dpkg/status\.d/[^/]+$")
PY_METADATA = re.compile(r"^(?P<site>.*/(?:site|dist)-packages)/"
                         r"(?P<dir>[^/]+\.(?:dist-info/METADATA|egg-info/PKG-INFO))$")
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")


def wanted(path: str) -> bool:
    return path == DPKG_STATUS or path in OS_RELEASE or bool(DPKG_STATUS_D.match(path) or PY_METADATA.match(path))


def _version(text: str) -> str:
    return quote(text, safe=".-_~")


def deb_purl(name: str, version: str, arch: str, distro: str) -> str:
    qualifiers = "&".join(q for q in (f"arch={quote(arch, safe='')}" if arch else "",
                                      f"distro={quote(distro, safe='')}" if distro else "") if q)
    return f"pkg:deb/debian/{quote(name, safe='.-_~+')}@{_version(version)}" + (f"?{qualifiers}" if qualifiers else "")


def pypi_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_purl(name: str, version: str) -> str:
    return f"pkg:pypi/{pypi_name(name)}@{_version(version)}"


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Paragraphs of a Debian control file (continuation lines joined)."""
    out: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip()
                fields[key] = value.strip()
        if fields.get("Package"):
            out.append(fields)
    return out


def os_release(texts: Mapping[str, bytes]) -> dict[str, str]:
    for path in OS_RELEASE:
        if path in texts:
            pairs = (line.partition("=") for line in texts[path].decode("utf-8", "replace").splitlines())
            return {k.strip(): v.strip().strip('"') for k, _, v in pairs if k.strip() and not k.startswith("#")}
    return {}


def debian_packages(texts: Mapping[str, bytes], distro: str) -> list[dict[str, Any]]:
    entries: list[tuple[str, dict[str, str]]] = []
    if DPKG_STATUS in texts:
        for fields in parse_deb822(texts[DPKG_STATUS].decode("utf-8", "replace")):
            if fields.get("Status", "").split()[-1:] == ["installed"]:
                entries.append((DPKG_STATUS, fields))
    for path in sorted(p for p in texts if DPKG_STATUS_D.match(p)):
        entries.extend((path, fields) for fields in parse_deb822(texts[path].decode("utf-8", "replace")))
    components = []
    for where, fields in entries:
        name, version, arch = fields["Package"], fields.get("Version", ""), fields.get("Architecture", "")
        component: dict[str, Any] = {
            "type": "library", "name": name, "version": version, "purl": deb_purl(name, version, arch, distro),
            "evidence": {"occurrences": [{"location": where}]},
        }
        source = fields.get("Source", "").split(" ", 1)[0]
        if source and source != name:
            component["properties"] = [{"name": "deb:source", "value": source}]
        components.append(component)
    return components


def python_distributions(texts: Mapping[str, bytes]) -> list[dict[str, Any]]:
    components = []
    parser = email.parser.HeaderParser()
    for path in sorted(p for p in texts if PY_METADATA.match(p)):
        meta = parser.parsestr(texts[path].decode("utf-8", "replace"))
        name, version = meta.get("Name"), meta.get("Version")
        if not name or not version:
            continue
        components.append({
            "type": "library", "name": name, "version": version, "purl": pypi_purl(name, version),
            "evidence": {"occurrences": [{"location": path.rsplit("/", 1)[0]}]},
        })
    return components


def sbom(image: OciImage, tool_version: str = "", serial: str | None = None,
         now: datetime.datetime | None = None) -> dict[str, Any]:
    """The image's CycloneDX 1.5 document."""
    files = image.filesystem()
    # /etc/os-release is a symlink to ../usr/lib/os-release on Debian: read both
    texts = image.read_files(match=lambda p: wanted(resolve_parent(p, files)) or wanted(p))
    release = os_release(texts)
    distro = f"{release.get('ID', '')}-{release.get('VERSION_ID', '')}" if release.get("ID") else ""
    components = debian_packages(texts, distro) + python_distributions(texts)
    seen: dict[str, int] = {}
    for component in components:
        ref = component["purl"]
        seen[ref] = seen.get(ref, 0) + 1
        component["bom-ref"] = ref if seen[ref] == 1 else f"{ref}#{seen[ref]}"
    reference = image.reference or image.path.name
    name, _, tag = reference.rpartition(":") if ":" in reference.rsplit("/", 1)[-1] else (reference, "", "")
    labels = image.labels
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial or uuid.uuid4().urn,
        "version": 1,
        "metadata": {
            "timestamp": (now or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "pet-harness image_sbom",
                                      "version": tool_version or "unknown"}]},
            "component": {
                "type": "container", "bom-ref": image.manifest_digest, "name": name or reference,
                "version": labels.get("org.opencontainers.image.version") or tag or image.manifest_digest,
                "properties": [
                    {"name": "oci:manifest-digest", "value": image.manifest_digest},
                    {"name": "oci:platform", "value": image.platform},
                    *({"name": f"oci:label:{k}", "value": v} for k, v in sorted(labels.items())),
                    *([{"name": "os-release", "value": release.get("PRETTY_NAME", "")}] if release else []),
                ],
            },
        },
        "components": components,
    }


def write_sbom(tar: Path, out: Path, platform: str | None = None, tool_version: str = "") -> dict[str, Any]:
    with OciImage(tar, platform) as image:
        document = sbom(image, tool_version)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    return document


def counts(document: Mapping[str, Any]) -> dict[str, int]:
    """Components per purl type: ``{"deb": 90, "pypi": 24}``."""
    out: dict[str, int] = {}
    for component in document.get("components", []):
        kind = str(component.get("purl", "pkg:?/")).split(":", 1)[1].split("/", 1)[0]
        out[kind] = out.get(kind, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a CycloneDX SBOM of an OCI image tar, from its contents")
    parser.add_argument("tar", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=Path("sbom.cdx.json"))
    parser.add_argument("--platform", help="os/arch of a multi-platform image (linux/arm64)")
    args = parser.parse_args(argv)
    document = write_sbom(args.tar, args.out, args.platform)
    print(f"{args.out}: {len(document['components'])} components {counts(document)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
