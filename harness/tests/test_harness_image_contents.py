"""Reading an image's OCI tar: the manifest of a platform, layers applied with whiteouts, the size
report's owners (site-packages by RECORD, Debian packages by dpkg's lists through merged /usr)
and the SBOM's components and purls. The images are small tars made here; the node suite reads
the real one (scenarios/test_image.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from pet_harness import image_report, image_run, image_sbom
from pet_harness.clusters import node_base_image
from pet_harness.oci_image import ImageError, OciImage, layer_tar, resolve_parent

STATUS = """\
Package: python3
Status: install ok installed
Architecture: amd64
Source: python3-defaults
Version: 3.11.2-1+b1
Description: interactive
 high-level language

Package: login
Status: install ok installed
Architecture: amd64
Version: 1:4.13+dfsg1-1

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0
"""
SITE = "opt/venv/lib/python3.11/site-packages"


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def make_image(path: Path, layers: list[bytes], arch: str = "amd64", gzip_layers: tuple[int, ...] = (),
               steps: list[str] | None = None, labels: dict[str, str] | None = None,
               other_arch: str | None = None) -> Path:
    """An OCI image-layout tar; ``other_arch`` adds a second manifest (a multi-platform index)."""
    blobs: dict[str, bytes] = {}

    def manifest_for(architecture: str) -> tuple[str, bytes]:
        descriptors, diff_ids = [], []
        for i, layer in enumerate(layers):
            diff_ids.append(_blob(layer)[0])
            stored = gzip.compress(layer, mtime=0) if i in gzip_layers else layer
            digest, data = _blob(stored)
            blobs[digest] = data
            media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if i in gzip_layers else "")
            descriptors.append({"mediaType": media, "digest": digest, "size": len(data)})
        history = [{"created_by": s} for s in (steps or [f"step {i}" for i in range(len(layers))])]
        history.insert(1, {"created_by": "ENV X=1", "empty_layer": True})
        config_digest, config = _blob(json.dumps({
            "architecture": architecture, "os": "linux", "config": {"Labels": labels or {}, "User": "65532:65532"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history}).encode())
        blobs[config_digest] = config
        digest, manifest = _blob(json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": len(config)}, "layers": descriptors}).encode())
        blobs[digest] = manifest
        return digest, manifest

    entries = []
    for architecture in [arch, *([other_arch] if other_arch else [])]:
        digest, manifest = manifest_for(architecture)
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                        "size": len(manifest), "platform": {"architecture": architecture, "os": "linux"},
                        "annotations": {"io.containerd.image.name": "example.local/app:t1"}})
    index = json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                           *((f"blobs/sha256/{d.split(':')[1]}", b) for d, b in blobs.items())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _base_layer() -> bytes:
    return layer_tar({
        "usr/bin/python3.11": b"x" * 5000,
        "usr/lib/python3.11/os.py": b"o" * 300,
        "usr/lib/python3.11/asyncio/base.py": b"a" * 200,
        "usr/lib/os-release": 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
        "var/lib/dpkg/status": STATUS,
        "var/lib/dpkg/info/python3.list": "/.\n/bin\n/bin/python3.11\n",
        "var/lib/dpkg/info/login.list": "/usr/bin/login\n",
        "usr/bin/login": b"l" * 100,
        "etc/old.conf": "old",
        "var/cache/stuff/a": "aaa",
    }, symlinks={"bin": "usr/bin", "etc/os-release": "../usr/lib/os-release"})


KOPF_METADATA = "Metadata-Version: 2.1\nName: kopf\nVersion: 1.45.2\n"
KOPF_RECORD = "kopf/__init__.py,sha256=x,10\nkopf-1.45.2.dist-info/METADATA,,\n../../../bin/kopf,sha256=y,4\n"


def _venv_layer() -> bytes:
    return layer_tar({
        f"{SITE}/kopf/__init__.py": b"k" * 1000,
        f"{SITE}/kopf/__pycache__/__init__.cpython-311.pyc": b"c" * 400,  # compiled after the install
        f"{SITE}/kopf-1.45.2.dist-info/METADATA": KOPF_METADATA,
        f"{SITE}/kopf-1.45.2.dist-info/RECORD": KOPF_RECORD,
        f"{SITE}/python_json_logger-4.2.0.dist-info/METADATA": "Name: python_json_logger\nVersion: 4.2.0\n",
        f"{SITE}/pet_thing-0.1.dev3+g1.dist-info/METADATA": "Name: pet-thing\nVersion: 0.1.dev3+g1\n",
        "opt/venv/bin/kopf": "#!/x",
        "etc/.wh.old.conf": "",
        "var/cache/stuff/.wh..wh..opq": "",
        "var/cache/stuff/b": "b",
    })


@pytest.fixture
def image_tar(tmp_path: Path) -> Path:
    return make_image(tmp_path / "img.tar", [_base_layer(), _venv_layer()], gzip_layers=(1,),
                      steps=["mmdebstrap", "COPY /opt/venv /opt/venv"],
                      labels={"org.opencontainers.image.version": "1.2.3"})


def test_the_layers_apply_in_order_with_whiteouts_and_keep_their_steps(image_tar: Path) -> None:
    with OciImage(image_tar) as image:
        assert [la.created_by for la in image.layers] == ["mmdebstrap", "COPY /opt/venv /opt/venv"]
        assert [la.compression for la in image.layers] == ["none", "gzip"]
        files = image.filesystem()
        assert "/etc/old.conf" not in files, "the .wh. entry removes the lower layer's file"
        assert "/var/cache/stuff/a" not in files and "/var/cache/stuff/b" in files, "the opaque folder"
        assert files[f"/{SITE}/kopf/__init__.py"].layer == 1
        assert image.labels == {"org.opencontainers.image.version": "1.2.3"}
        uncompressed, packed = image.layer_sizes(image.layers[1])
        assert uncompressed == len(_venv_layer()) and packed == image.layers[1].stored_size


def test_a_multi_platform_index_needs_the_platform_and_refuses_a_missing_one(tmp_path: Path) -> None:
    tar = make_image(tmp_path / "multi.tar", [_base_layer()], other_arch="arm64")
    with pytest.raises(ImageError, match="2 image manifests; name the platform"):
        OciImage(tar)
    with OciImage(tar, "linux/arm64") as image:
        assert image.platform == "linux/arm64"
    with pytest.raises(ImageError,
                       match=r"no manifest for the platform linux/s390x \(it has: linux/amd64, linux/arm64\)"):
        OciImage(tar, "linux/s390x")


def test_folders_symlinks_are_followed_but_not_the_last_component(image_tar: Path) -> None:
    with OciImage(image_tar) as image:
        files = image.filesystem()
    assert resolve_parent("/bin/python3.11", files) == "/usr/bin/python3.11"
    assert resolve_parent("/etc/os-release", files) == "/etc/os-release"
    assert resolve_parent("/nowhere/x", files) == "/nowhere/x"


def test_the_report_gives_layers_and_owners(image_tar: Path, tmp_path: Path) -> None:
    report = image_report.write_report(image_tar, tmp_path / "out")
    assert [la["step"] for la in report["layers"]] == ["mmdebstrap", "COPY /opt/venv /opt/venv"]
    (dists,) = report["site_packages"].values()
    owners = dict(dists["distributions"])
    # the RECORD's files, the bytecode compiled after it (by its folder), the console script, the dist-info
    assert owners["kopf"] == 1000 + 400 + 4 + len(KOPF_METADATA) + len(KOPF_RECORD)
    debs = dict(report["debian_packages"]["packages"])
    assert debs["python3"] == 5000, "dpkg lists /bin/python3.11; merged /usr puts it in /usr/bin"
    assert debs["login"] == 100
    assert dict(report["python_stdlib"]["parts"]) == {"(modules at the top)": 300, "asyncio": 200}
    markdown = (tmp_path / "out" / "image-report.md").read_text()
    assert "| 1 | `COPY /opt/venv /opt/venv` |" in markdown
    assert json.loads((tmp_path / "out" / "image-report.json").read_text())["size"]["files"] == report["size"]["files"]


def test_the_sbom_lists_installed_debian_packages_and_python_distributions_with_purls(image_tar: Path,
                                                                                      tmp_path: Path) -> None:
    document = image_sbom.write_sbom(image_tar, tmp_path / "sbom.json", tool_version="9")
    purls = {c["name"]: c["purl"] for c in document["components"]}
    assert purls == {
        "python3": "pkg:deb/debian/python3@3.11.2-1%2Bb1?arch=amd64&distro=debian-12",
        "login": "pkg:deb/debian/login@1%3A4.13%2Bdfsg1-1?arch=amd64&distro=debian-12",
        "kopf": "pkg:pypi/kopf@1.45.2",
        "python_json_logger": "pkg:pypi/python-json-logger@4.2.0",
        "pet-thing": "pkg:pypi/pet-thing@0.1.dev3%2Bg1",
    }, "a package whose status is not installed is left out"
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.5"
    assert document["metadata"]["component"]["version"] == "1.2.3"
    assert image_sbom.counts(document) == {"deb": 2, "pypi": 3}
    python3 = next(c for c in document["components"] if c["name"] == "python3")
    assert python3["properties"] == [{"name": "deb:source", "value": "python3-defaults"}]
    refs = [c["bom-ref"] for c in document["components"]]
    assert len(refs) == len(set(refs))


def test_distroless_status_d_entries_count_as_installed() -> None:
    texts = {"/var/lib/dpkg/status.d/base": b"Package: base-files\nVersion: 12.4\nArchitecture: arm64\n"}
    (component,) = image_sbom.debian_packages(texts, "debian-12")
    assert component["purl"] == "pkg:deb/debian/base-files@12.4?arch=arm64&distro=debian-12"


def test_a_program_of_the_image_runs_in_a_chroot_as_its_user_with_its_environment(tmp_path: Path) -> None:
    config = {"User": "65532:65532", "WorkingDir": "/tmp", "Env": ["PATH=/opt/venv/bin:/usr/bin"],
              "Entrypoint": ["/usr/local/bin/tini", "--", "/opt/venv/bin/python", "-m", "app"]}
    argv = image_run.chroot_command(tmp_path, config, ["--version"])
    assert argv[1:] == ["--userspec=65532:65532", str(tmp_path), "/usr/bin/env", "-i", "--chdir=/tmp",
                        "PATH=/opt/venv/bin:/usr/bin", "/usr/local/bin/tini", "--", "/opt/venv/bin/python", "-m",
                        "app", "--version"]
    assert image_run.chroot_command(tmp_path, {"User": "1000"}, ["id"], entrypoint=False)[1] == "--userspec=1000:1000"


def _binfmt(tmp_path: Path, text: str | None) -> Path:
    if text is not None:
        (tmp_path / "qemu-aarch64").write_text(text)
    return tmp_path


def test_foreign_programs_need_an_enabled_binfmt_entry_with_the_fix_binary_flag(tmp_path: Path) -> None:
    check = node_base_image.foreign_arch_problem
    assert "no binfmt_misc entry" in str(check("arm64", _binfmt(tmp_path, None)))
    assert "is disabled" in str(check("arm64", _binfmt(tmp_path, "disabled\ninterpreter /q\nflags: F\n")))
    assert "lacks the F" in str(check("arm64", _binfmt(tmp_path, "enabled\ninterpreter /q\nflags: P\n")))
    assert check("arm64", _binfmt(tmp_path, "enabled\ninterpreter /q\nflags: PF\n")) is None
    assert "no qemu-user mapping for the architecture 'mips'" in str(check("mips", tmp_path))


def test_an_arm64_base_asks_mmdebstrap_for_that_architecture_with_merged_usr(tmp_path: Path) -> None:
    if node_base_image.find_tool("mmdebstrap") is None or not node_base_image.MERGED_USR_HOOKS.is_dir():
        pytest.skip("mmdebstrap and its hooks are not installed here")
    argv = node_base_image.mmdebstrap_command(tmp_path / "o.tar", ("python3",), "bookworm", [], "arm64")
    assert "--arch=arm64" in argv
    assert f"--hook-dir={node_base_image.MERGED_USR_HOOKS}" in argv, "without it usrmerge pulls in perl"
    host = node_base_image.mmdebstrap_command(tmp_path / "o.tar", ("python3",), "bookworm", [])
    assert not any(a.startswith("--arch") for a in host)
    assert node_base_image.base_digest(("python3",), "bookworm", [], "arm64") != \
        node_base_image.base_digest(("python3",), "bookworm", [])


def test_unpacking_writes_the_final_filesystem(image_tar: Path, tmp_path: Path) -> None:
    from pet_harness.oci_image import unpack

    with OciImage(image_tar) as image:
        unpack(image, tmp_path / "rootfs")
    root = tmp_path / "rootfs"
    assert (root / SITE / "kopf" / "__init__.py").read_bytes() == b"k" * 1000
    assert not (root / "etc" / "old.conf").exists()
    assert sorted(p.name for p in (root / "var" / "cache" / "stuff").iterdir()) == ["b"]
    assert (root / "bin").is_symlink() and (root / "bin" / "python3.11").is_file()


def test_arm64_wheels_are_downloaded_as_binaries_for_that_platform(tmp_path: Path) -> None:
    from pet_harness import pet_image
    from pet_harness.clusters.base import ClusterError

    argv = pet_image.wheel_command(["kopf>=1"], tmp_path, "arm64")
    assert argv[3:5] == ["download", "--quiet"] and "--only-binary=:all:" in argv
    assert "--platform=manylinux2014_aarch64" in argv and "--implementation=cp" in argv
    host = pet_image.wheel_command(["kopf>=1"], tmp_path, None)
    assert host[3] == "wheel"
    with pytest.raises(ClusterError, match="no wheel platform known for the architecture 'riscv64'"):
        pet_image.wheel_command(["kopf"], tmp_path, "riscv64")


def test_buildctl_is_asked_for_the_platform_and_the_hash_tells_platforms_apart(tmp_path: Path) -> None:
    from pet_harness.clusters import node_buildkit

    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    argv = node_buildkit.buildctl_command(Path("/b"), Path("/s"), tmp_path, "Dockerfile", {}, {}, tmp_path / "o.tar",
                                          "x:1", platform="linux/arm64")
    assert argv[argv.index("platform=linux/arm64") - 1] == "--opt"
    assert "platform=linux/arm64" not in node_buildkit.buildctl_command(
        Path("/b"), Path("/s"), tmp_path, "Dockerfile", {}, {}, tmp_path / "o.tar", "x:1")
    host = node_buildkit.content_hash(tmp_path, "Dockerfile", [], {}, {})
    assert node_buildkit.content_hash(tmp_path, "Dockerfile", [], {}, {}, None, "linux/arm64") != host
