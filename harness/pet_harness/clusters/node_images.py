"""Images made here, without a registry: the pause image and a small toolbox image.

Both hold one static Go program (``CGO_ENABLED=0``, about 1.5 MB) built once into the cache:

* ``pause`` (no arguments, or called as ``/pause``): waits for SIGTERM or SIGINT and reaps
  children, which is all a pod sandbox's first process must do;
* ``toolbox connect HOST:PORT [SECONDS]``: opens a TCP connection and says whether it could,
  exit 0 if it connected and 1 if not (a pod that proves it cannot leave the machine);
  ``toolbox listen PORT``: accepts TCP connections and answers each with ``ok`` (the other end
  of a connection test); ``toolbox sleep``: the pause loop under another name;
  ``toolbox api METHOD PATH [BODY]``: one request to the API server as an in-cluster client does
  it (``$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, the mounted service-account token,
  the server certificate checked against the mounted CA), printing the status code and the body;
  exit 0 for a 2xx answer, 1 otherwise.

Each image is an OCI image layout in a tar: ``oci-layout``, ``index.json`` naming the image in the
``io.containerd.image.name`` annotation, the manifest, the config and one uncompressed layer (whose
digest is its diff_id), imported into the node's containerd with ``ctr images import``. Built
images are cached by the content hash of the program's source and the Go version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import platform
import subprocess  # nosec B404 # argv lists, never a shell
import tarfile
from pathlib import Path

from pet_harness import binaries
from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node_config import PAUSE_IMAGE

#: the one program in both images
TOOL_SOURCE = """\
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount/"

// api sends one request to the API server the way client-go's in-cluster configuration does.
func api(method, path, body string) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		fmt.Println("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
		os.Exit(1)
	}
	token, err := os.ReadFile(serviceAccount + "token")
	if err != nil {
		fmt.Printf("no service-account token: %v\\n", err)
		os.Exit(1)
	}
	caPEM, err := os.ReadFile(serviceAccount + "ca.crt")
	if err != nil {
		fmt.Printf("no service-account CA: %v\\n", err)
		os.Exit(1)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fmt.Println("the service-account CA holds no certificate")
		os.Exit(1)
	}
	httpClient := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	url := "https://" + net.JoinHostPort(host, port) + path
	req, err := http.NewRequest(method, url, bytes.NewBufferString(body))
	if err != nil {
		fmt.Printf("bad request: %v\\n", err)
		os.Exit(2)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		fmt.Printf("%s %s failed: %v\\n", method, url, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d %s\\n", resp.StatusCode, strings.TrimSpace(string(answer)))
	if resp.StatusCode/100 != 2 {
		os.Exit(1)
	}
}

// pause waits for SIGTERM or SIGINT and reaps whatever child ends meanwhile.
func pause() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	children := make(chan os.Signal, 16)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-children:
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}

// connect dials addr over TCP: exit 0 when it connects, 1 when it cannot.
func connect(addr string, seconds float64) {
	conn, err := net.DialTimeout("tcp", addr, time.Duration(seconds*float64(time.Second)))
	if err != nil {
		fmt.Printf("cannot connect to %s: %v\\n", addr, err)
		os.Exit(1)
	}
	conn.Close()
	fmt.Printf("connected to %s\\n", addr)
}

// listen accepts TCP connections on port, answering each with "ok" (until SIGTERM or SIGINT).
func listen(port string) {
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		fmt.Printf("cannot listen on %s: %v\\n", port, err)
		os.Exit(1)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		os.Exit(0)
	}()
	fmt.Printf("listening on %s\\n", port)
	for {
		conn, err := ln.Accept()
		if err != nil {
			continue
		}
		conn.Write([]byte("ok\\n"))
		conn.Close()
	}
}

func main() {
	if filepath.Base(os.Args[0]) == "pause" || len(os.Args) < 2 {
		pause()
	}
	switch os.Args[1] {
	case "sleep":
		pause()
	case "listen":
		if len(os.Args) < 3 {
			fmt.Println("usage: toolbox listen PORT")
			os.Exit(2)
		}
		listen(os.Args[2])
	case "connect":
		seconds := 5.0
		if len(os.Args) > 3 {
			if s, err := strconv.ParseFloat(os.Args[3], 64); err == nil {
				seconds = s
			}
		}
		if len(os.Args) < 3 {
			fmt.Println("usage: toolbox connect HOST:PORT [SECONDS]")
			os.Exit(2)
		}
		connect(os.Args[2], seconds)
	case "api":
		if len(os.Args) < 4 {
			fmt.Println("usage: toolbox api METHOD PATH [BODY]")
			os.Exit(2)
		}
		body := ""
		if len(os.Args) > 4 {
			body = os.Args[4]
		}
		api(os.Args[2], os.Args[3], body)
	default:
		fmt.Printf("unknown command %q: sleep, listen, connect or api\\n", os.Args[1])
		os.Exit(2)
	}
}
"""

#: the toolbox image's name (the pause image's is :data:`PAUSE_IMAGE`)
TOOLBOX_REPOSITORY = "pet-harness.local/toolbox"


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    reference: str  #: e.g. registry.k8s.io/pause:3.10
    path_in_image: str  #: where the program lies, e.g. /pause
    entrypoint: tuple[str, ...]
    user: str  #: numeric uid:gid the image runs as


def go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def _go_version() -> str:
    proc = subprocess.run(  # nosec B603 # argv of our own, no shell
        [binaries.go_executable(), "env", "GOVERSION"], capture_output=True, text=True)
    return proc.stdout.strip()


def tool_digest() -> str:
    return hashlib.sha256(f"{TOOL_SOURCE}\n{_go_version()}\n{go_arch()}".encode()).hexdigest()[:16]


def toolbox_reference() -> str:
    return f"{TOOLBOX_REPOSITORY}:{tool_digest()}"


def images_dir() -> Path:
    return binaries.cache_root() / "node-images"


def build_tool(progress: binaries.Progress | None = None) -> Path:
    """The static program, built once per source and Go version into the cache."""
    out_dir = images_dir() / tool_digest()
    binary = out_dir / "toolbox"
    if binary.is_file():
        return binary
    say = progress or (lambda line: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = out_dir / "src"
    module.mkdir(exist_ok=True)
    (module / "go.mod").write_text("module pet-harness.local/toolbox\n\ngo 1.22\n")
    (module / "main.go").write_text(TOOL_SOURCE)
    say("building the node's pause and toolbox program (static Go)")
    env = dict(binaries._go_env(), CGO_ENABLED="0", GOOS="linux", GOARCH=go_arch(), GOFLAGS="-mod=mod")
    partial = binary.with_name("toolbox.partial")
    proc = subprocess.run(  # nosec B603 # argv of our own, no shell
        [binaries.go_executable(), "build", "-trimpath", "-ldflags", "-s -w", "-o", str(partial), "."],
        cwd=module, env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise ClusterError(f"building the pause program failed:\n{proc.stderr.strip()[-2000:]}")
    partial.replace(binary)
    return binary


def _tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A deterministic tar: ``name -> (content, mode)``, root-owned, mtime 0."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def oci_layout_tar(spec: ImageSpec, program: bytes, arch: str | None = None) -> bytes:
    """An OCI image layout, as a tar, holding one image: ``program`` at ``spec.path_in_image``."""
    architecture = arch or go_arch()
    layer_digest, layer = _blob(_tar_bytes({spec.path_in_image.lstrip("/"): (program, 0o755)}))
    config_digest, config = _blob(json.dumps({
        "architecture": architecture,
        "os": "linux",
        "config": {"Entrypoint": list(spec.entrypoint), "User": spec.user, "WorkingDir": "/",
                   "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "pet-harness: one static program"}],
    }, sort_keys=True).encode())
    manifest_digest, manifest = _blob(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": len(layer)}],
    }, sort_keys=True).encode())
    tag = spec.reference.rsplit(":", 1)[1] if ":" in spec.reference.rsplit("/", 1)[-1] else "latest"
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": len(manifest),
            "annotations": {"io.containerd.image.name": spec.reference, "org.opencontainers.image.ref.name": tag},
            "platform": {"architecture": architecture, "os": "linux"},
        }],
    }, sort_keys=True).encode()
    files = {
        "oci-layout": (json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), 0o644),
        "index.json": (index, 0o644),
    }
    for digest, data in ((layer_digest, layer), (config_digest, config), (manifest_digest, manifest)):
        files[f"blobs/sha256/{digest.split(':', 1)[1]}"] = (data, 0o644)
    return _tar_bytes(files)


def node_images() -> list[ImageSpec]:
    return [
        ImageSpec(PAUSE_IMAGE, "/pause", ("/pause",), "65535:65535"),
        ImageSpec(toolbox_reference(), "/toolbox", ("/toolbox",), "65532:65532"),
    ]


def image_tars(progress: binaries.Progress | None = None) -> list[tuple[ImageSpec, Path]]:
    """The node's image tars, made (and cached) from the program."""
    program = build_tool(progress).read_bytes()
    out = []
    for spec in node_images():
        name = spec.reference.replace("/", "_").replace(":", "_") + ".tar"
        path = images_dir() / tool_digest() / name
        if not path.is_file():
            partial = path.with_name(name + ".partial")
            partial.write_bytes(oci_layout_tar(spec, program))
            partial.replace(path)
        out.append((spec, path))
    return out


def import_images(ctr: str, socket: Path, tars: list[tuple[ImageSpec, Path]]) -> None:
    """Import each tar into the ``k8s.io`` namespace (the one the CRI uses) and unpack it."""
    for spec, path in tars:
        proc = subprocess.run(  # nosec B603 # argv of our own, no shell
            [ctr, "--address", str(socket), "--namespace", "k8s.io", "images", "import",
             str(path)],
            capture_output=True, text=True, timeout=120,
        )
        if proc.returncode != 0:
            raise ClusterError(f"ctr images import of {spec.reference} ({path}) failed: {proc.stderr.strip()}")
