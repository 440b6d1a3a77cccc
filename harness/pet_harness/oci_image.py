"""Reading an OCI image from its image-layout tar (what ``buildctl --output type=oci`` writes):
the index, the manifest of one platform, the config (labels, history) and the layers, and the
root filesystem the layers make when applied in order (whiteouts honoured).

Only the Python standard library: ``tarfile`` reads the outer tar and each layer (uncompressed,
gzip or, with the ``zstandard`` module, zstd). The layers are read from the outer tar in place.

Format facts from the OCI image specification (github.com/opencontainers/image-spec:
image-layout.md, manifest.md, config.md, layer.md): a layer's ``diff_id`` in the config is the
digest of its uncompressed tar; ``.wh.NAME`` removes NAME of lower layers and ``.wh..wh..opq``
empties the folder it lies in; history entries with ``empty_layer`` made no layer.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class ImageError(Exception):
    """The tar is not an OCI image layout this module can read, or lacks what was asked for."""


@dataclasses.dataclass(frozen=True)
class Layer:
    index: int
    digest: str
    media_type: str
    stored_size: int  #: the blob's size in the layout (compressed or not, as the builder left it)
    created_by: str  #: the history entry (the Dockerfile step) that made it, or ""

    @property
    def compression(self) -> str:
        if self.media_type.endswith("+gzip") or self.media_type.endswith(".tar.gzip"):
            return "gzip"
        if self.media_type.endswith("+zstd"):
            return "zstd"
        return "none"


@dataclasses.dataclass(frozen=True)
class FileEntry:
    path: str  #: absolute, normalised: /usr/lib/python3.11/os.py
    size: int  #: bytes of a regular file (0 for links and folders)
    kind: str  #: file, dir, symlink, hardlink, other
    layer: int  #: the layer that put this version of it there
    link: str = ""  #: a link's target


def _norm(name: str) -> str:
    parts = [p for p in PurePosixPath("/" + name.lstrip("./")).parts if p not in ("/", ".")]
    return "/" + "/".join(parts)


class OciImage:
    """One platform's image in an OCI image-layout tar. Use as a context manager (the tar stays open)."""

    def __init__(self, tar_path: Path, platform: str | None = None):
        self.path = Path(tar_path)
        try:
            self._tar = tarfile.open(self.path, "r:")  # noqa: SIM115 - closed by close()/__exit__
        except (OSError, tarfile.TarError) as exc:
            raise ImageError(f"{self.path} is not a readable tar: {exc}") from exc
        try:
            self._members = {_norm(m.name).lstrip("/"): m for m in self._tar.getmembers()}
            index = self.json("index.json")
            self.manifest_digest, self.manifest = self._pick_manifest(index, platform)
            self.config_digest = self.manifest["config"]["digest"]
            self.config: dict[str, Any] = self.blob_json(self.config_digest)
            self.layers = self._layers()
        except BaseException:
            self._tar.close()
            raise

    def __enter__(self) -> OciImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tar.close()

    # -- the layout's documents
    def _member(self, name: str) -> tarfile.TarInfo:
        member = self._members.get(name)
        if member is None:
            raise ImageError(f"{self.path}: no {name} in the image layout")
        return member

    def open_member(self, name: str) -> IO[bytes]:
        handle = self._tar.extractfile(self._member(name))
        if handle is None:
            raise ImageError(f"{self.path}: {name} is not a regular file")
        return handle

    def json(self, name: str) -> dict[str, Any]:
        with self.open_member(name) as handle:
            data: dict[str, Any] = json.loads(handle.read())
            return data

    @staticmethod
    def blob_name(digest: str) -> str:
        algorithm, _, hexdigest = digest.partition(":")
        return f"blobs/{algorithm}/{hexdigest}"

    def blob_json(self, digest: str) -> dict[str, Any]:
        return self.json(self.blob_name(digest))

    def blob_size(self, digest: str) -> int:
        return self._member(self.blob_name(digest)).size

    def _pick_manifest(self, index: dict[str, Any], platform: str | None) -> tuple[str, dict[str, Any]]:
        """The one manifest of the index, or the one of ``platform`` (``linux/arm64``); nested
        indexes (a multi-platform image) are followed."""
        found: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

        def walk(doc: dict[str, Any]) -> None:
            for desc in doc.get("manifests", []):
                media = desc.get("mediaType", "")
                if media in INDEX_TYPES:
                    walk(self.blob_json(desc["digest"]))
                elif media in MANIFEST_TYPES:
                    plat = desc.get("platform") or {}
                    if plat.get("architecture") == "unknown":  # BuildKit's attestation manifests
                        continue
                    found.append((desc["digest"], plat, self.blob_json(desc["digest"])))

        walk(index)
        if platform:
            os_name, _, arch = platform.partition("/")
            chosen = [f for f in found if f[1].get("os") == os_name and f[1].get("architecture") == arch]
            if not chosen:
                have = ", ".join(f"{p.get('os')}/{p.get('architecture')}" for _, p, _ in found) or "none"
                raise ImageError(f"{self.path}: no manifest for the platform {platform} (it has: {have})")
            found = chosen
        if len(found) != 1:
            raise ImageError(f"{self.path}: {len(found)} image manifests; name the platform (os/arch) to read")
        digest, _, manifest = found[0]
        return digest, manifest

    def _layers(self) -> list[Layer]:
        steps = [h.get("created_by", "") for h in self.config.get("history", []) if not h.get("empty_layer")]
        descriptors = self.manifest.get("layers", [])
        if len(steps) != len(descriptors):  # a config without history: no step names
            steps = [""] * len(descriptors)
        return [Layer(i, d["digest"], d.get("mediaType", ""), self.blob_size(d["digest"]), steps[i])
                for i, d in enumerate(descriptors)]

    # -- facts from the config
    @property
    def platform(self) -> str:
        return f"{self.config.get('os', '?')}/{self.config.get('architecture', '?')}"

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})

    @property
    def reference(self) -> str:
        for desc in self.json("index.json").get("manifests", []):
            name = (desc.get("annotations") or {}).get("io.containerd.image.name")
            if name:
                return str(name)
        return ""

    # -- the layers' contents
    def open_layer(self, layer: Layer) -> IO[bytes]:
        """The layer's uncompressed tar stream."""
        raw = self.open_member(self.blob_name(layer.digest))
        if layer.compression == "gzip":
            return cast(IO[bytes], gzip.GzipFile(fileobj=raw))
        if layer.compression == "zstd":
            try:
                import zstandard  # type: ignore[import-not-found, unused-ignore]
            except ImportError as exc:
                raise ImageError(f"layer {layer.digest} is zstd-compressed: pip install zstandard to read it") from exc
            return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(raw))
        return raw

    def layer_members(self, layer: Layer) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
        with self.open_layer(layer) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                yield member, tar

    def layer_sizes(self, layer: Layer) -> tuple[int, int]:
        """(the uncompressed tar's size, its gzip size at level 6): the second is what a registry
        push would store for a gzip layer, measured when the layout holds it uncompressed."""
        if layer.compression == "gzip":
            with self.open_layer(layer) as stream:
                total = sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 20), b""))
            return total, layer.stored_size
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        total = packed = 0
        with self.open_layer(layer) as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                total += len(chunk)
                packed += len(compressor.compress(chunk))
        packed += len(compressor.flush())
        return total, packed

    def filesystem(self) -> dict[str, FileEntry]:
        """The root filesystem of the image: every path after all layers, with the layer that
        last wrote it."""
        files: dict[str, FileEntry] = {}
        for layer in self.layers:
            for member, _ in self.layer_members(layer):
                path = _norm(member.name)
                parent, base = path.rsplit("/", 1)
                if base == OPAQUE:
                    prefix = (parent or "") + "/"
                    for key in [k for k in files if k.startswith(prefix)]:
                        del files[key]
                    continue
                if base.startswith(WHITEOUT):
                    gone = f"{parent}/{base[len(WHITEOUT):]}"
                    for key in [k for k in files if k == gone or k.startswith(gone + "/")]:
                        del files[key]
                    continue
                if path == "/":
                    continue
                kind = ("file" if member.isreg() else "dir" if member.isdir() else "symlink" if member.issym()
                        else "hardlink" if member.islnk() else "other")
                files[path] = FileEntry(path, member.size if member.isreg() else 0, kind, layer.index,
                                        member.linkname if member.issym() or member.islnk() else "")
        return files

    def read_files(self, wanted: set[str] | None = None, match: Any = None) -> dict[str, bytes]:
        """The contents of regular files of the final filesystem: those in ``wanted`` (absolute
        paths) or those for which ``match(path)`` is true. The top layer's version wins; a file a
        later layer removed is left out."""
        final = self.filesystem()
        out: dict[str, bytes] = {}
        for layer in self.layers:
            for member, tar in self.layer_members(layer):
                path = _norm(member.name)
                if not member.isreg():
                    continue
                if not ((wanted is not None and path in wanted) or (match is not None and match(path))):
                    continue
                entry = final.get(path)
                if entry is None or entry.layer != layer.index:
                    continue
                handle = tar.extractfile(member)
                if handle is not None:
                    out[path] = handle.read()
        return out


def resolve_parent(path: str, files: dict[str, FileEntry], limit: int = 40) -> str:
    """``path`` with the symlinks among its folders followed inside the image (not the last
    component): on a merged-/usr system dpkg lists ``/bin/ls``, which is ``/usr/bin/ls``."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while len(parts) > 1:
        head = parts.pop(0)
        candidate = "/" + "/".join([*done, head])
        entry = files.get(candidate)
        if entry is not None and entry.kind == "symlink" and hops < limit:
            hops += 1
            target = entry.link
            base = [] if target.startswith("/") else done
            parts = [*_norm("/".join([*base, target])).strip("/").split("/"), *parts]
            parts = [p for p in parts if p]
            done = []
            continue
        done.append(head)
    return "/" + "/".join([*done, *parts])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def layer_tar(files: dict[str, bytes | str | None], symlinks: dict[str, str] | None = None) -> bytes:
    """A small layer tar for tests: ``path -> content`` (``None``: a folder); ``symlinks``: ``path -> target``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name.lstrip("/"))
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            data = content.encode() if isinstance(content, str) else content
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in sorted((symlinks or {}).items()):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def unpack(image: OciImage, dest: Path) -> None:
    """The image's root filesystem written under ``dest`` (root needed for its owners and device
    nodes): the layers in order, whiteouts applied. Members that would land outside ``dest`` are
    refused by tarfile's ``tar`` filter, which also drops setuid bits."""
    dest.mkdir(parents=True, exist_ok=True)
    for layer in image.layers:
        for member, tar in image.layer_members(layer):
            path = _norm(member.name)
            parent, base = path.rsplit("/", 1)
            target_parent = dest / parent.lstrip("/")
            if base == OPAQUE:
                if target_parent.is_dir():
                    for child in target_parent.iterdir():
                        _remove(child)
                continue
            if base.startswith(WHITEOUT):
                _remove(target_parent / base[len(WHITEOUT):])
                continue
            existing = dest / path.lstrip("/")
            if (existing.is_symlink() or existing.exists()) and not (member.isdir() and existing.is_dir()):
                _remove(existing)
            tar.extract(member, dest, filter="tar")


def _remove(path: Path) -> None:
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
