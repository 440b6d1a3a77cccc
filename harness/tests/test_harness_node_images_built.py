"""Images the node builds, without building them: BuildKit's command lines, the content hash that
caches built images, the OCI layout of the Debian base, and the operator's manifests as the harness
applies them (no cluster, no BuildKit run here: scenarios/test_node_operator.py does that)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from pet_harness import pet_deploy
from pet_harness.clusters import node_base_image, node_buildkit
from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node_base_image import OciLayout
from pet_harness.pki import CertificateAuthority


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM base\nCOPY a.txt /\n")
    (tmp_path / "a.txt").write_text("one")
    return tmp_path


def test_the_content_hash_changes_with_each_input_and_nothing_else(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    base = OciLayout(tmp_path / "layout", "base:1", "sha256:" + "a" * 64)
    first = node_buildkit.content_hash(root, "Dockerfile", ["a.txt"], {"X": "1"}, {"base": base})
    assert first == node_buildkit.content_hash(root, "Dockerfile", ["a.txt"], {"X": "1"}, {"base": base})
    (root / "unrelated.txt").write_text("not an input")
    assert first == node_buildkit.content_hash(root, "Dockerfile", ["a.txt"], {"X": "1"}, {"base": base})
    (root / "a.txt").write_text("two")
    changed_file = node_buildkit.content_hash(root, "Dockerfile", ["a.txt"], {"X": "1"}, {"base": base})
    assert changed_file != first
    assert node_buildkit.content_hash(root, "Dockerfile", ["a.txt"], {"X": "2"}, {"base": base}) != changed_file
    other_base = OciLayout(tmp_path / "layout", "base:1", "sha256:" + "b" * 64)
    assert node_buildkit.content_hash(root, "Dockerfile", ["a.txt"], {"X": "1"}, {"base": other_base}) != changed_file
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "x-1.whl").write_bytes(b"w")
    with_wheels = node_buildkit.content_hash(root, "Dockerfile", ["a.txt"], {"X": "1"}, {"base": base}, {"w": wheels})
    (wheels / "y-2.whl").write_bytes(b"w")
    assert node_buildkit.content_hash(root, "Dockerfile", ["a.txt"], {"X": "1"}, {"base": base},
                                      {"w": wheels}) != with_wheels


def test_a_missing_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match=r"the image input nope.txt is not a file"):
        node_buildkit.content_hash(_tree(tmp_path), "Dockerfile", ["nope.txt"], {}, {})


def test_buildctl_gets_the_base_as_an_oci_layout_context_and_writes_an_oci_tar(tmp_path: Path) -> None:
    base = OciLayout(Path("/cache/base/layout"), "pet-harness.local/debian-python:bookworm-1", "sha256:" + "c" * 64)
    argv = node_buildkit.buildctl_command(Path("/bk/buildctl"), Path("/tmp/s.sock"), Path("/repo"), "Dockerfile",
                                          {"BASE_IMAGE": base.reference}, {base.reference: base},
                                          Path("/out/i.tar"), "r/op:1", {"wheels": Path("/w")})
    text = " ".join(argv)
    assert argv[:4] == ["/bk/buildctl", "--addr", "unix:///tmp/s.sock", "build"]
    assert "--frontend dockerfile.v0" in text
    assert "--local context=/repo --local dockerfile=/repo --opt filename=Dockerfile" in text
    assert f"--opt build-arg:BASE_IMAGE={base.reference}" in text
    assert ("--oci-layout store0=/cache/base/layout --opt "
            f"context:{base.reference}=oci-layout://store0@sha256:{'c' * 64}") in text
    assert "--local wheels=/w --opt context:wheels=local:wheels" in text
    assert argv[-2:] == ["--output", "type=oci,dest=/out/i.tar,name=r/op:1"]


def test_buildkitd_runs_its_own_runc_worker_with_its_state_given() -> None:
    argv = node_buildkit.buildkitd_command(Path("/bk/buildkitd"), Path("/state"), Path("/tmp/s.sock"))
    assert argv[1:5] == ["--root", "/state", "--addr", "unix:///tmp/s.sock"]
    assert "--oci-worker=true" in argv and "--containerd-worker=false" in argv
    assert "--oci-worker-snapshotter=overlayfs" in argv


def test_the_base_layout_has_one_uncompressed_layer_whose_digest_is_its_diff_id(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(b"pretend this is a tar")
    layer_digest = "sha256:" + hashlib.sha256(b"pretend this is a tar").hexdigest()
    layout = tmp_path / "layout"
    manifest_digest = node_base_image.write_layout(layout, rootfs, "example.local/base:t1", {"Cmd": ["python3"]})
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["digest"] == manifest_digest
    assert entry["annotations"]["io.containerd.image.name"] == "example.local/base:t1"
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest.split(":")[1]).read_bytes())
    (layer,) = manifest["layers"]
    assert layer == {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": 21}
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    assert config["rootfs"]["diff_ids"] == [layer_digest]
    assert not rootfs.exists(), "the root filesystem tar is moved into the layout, not copied"


def test_mmdebstrap_makes_a_minbase_with_the_packages_from_the_given_sources(tmp_path: Path) -> None:
    argv = node_base_image.mmdebstrap_command(tmp_path / "out.tar", ("python3", "tini"), "bookworm",
                                              ["/etc/apt/sources.list.d/debian.sources"])
    assert "--variant=minbase" in argv and "--include=python3,tini" in argv
    assert argv[-3:] == ["bookworm", str(tmp_path / "out.tar"), "/etc/apt/sources.list.d/debian.sources"]
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv


# --- the operator's manifests as applied on the node -----------------------------------------------


def test_the_deployment_gets_the_image_built_here_never_pulled_and_the_served_namespaces() -> None:
    body = pet_deploy.operator_deployment("pet-harness.local/pet-operator:abc", ["a", "b"], 2, ["--x"])
    (container,) = body["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["imagePullPolicy"]) == ("pet-harness.local/pet-operator:abc", "Never")
    assert container["args"][:2] == ["--namespace=a", "--namespace=b"]
    assert container["args"][-1] == "--x"
    assert "--leader-elect" in container["args"]
    assert not any(a == "--namespace=default" for a in container["args"])
    # everything else as shipped: the restricted security context and the TLS mount
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = body["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": pet_deploy.TLS_SECRET}} in volumes


def test_the_webhook_configurations_keep_the_service_and_get_the_ca_and_namespaces() -> None:
    ca = CertificateAuthority("test-ca")
    bodies = pet_deploy.webhook_configurations(["a"], ca.cert_pem)
    assert [b["kind"] for b in bodies] == ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]
    for body in bodies:
        assert "annotations" not in body["metadata"], "cert-manager's injection is not used"
        for hook in body["webhooks"]:
            assert hook["clientConfig"]["service"]["name"] == pet_deploy.SERVICE
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == ca.cert_pem
            assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["a"]


def test_the_tls_secret_serves_the_services_names() -> None:
    from cryptography import x509

    secret = pet_deploy.webhook_tls(CertificateAuthority("test-ca"))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "pet-operator-webhook.pet-system.svc" in names
    assert secret["type"] == "kubernetes.io/tls"


def test_older_builds_of_a_repository_unused_for_an_hour_are_pruned_to_the_newest_two(tmp_path: Path) -> None:
    import os

    made = []
    for i in range(4):
        path = tmp_path / f"r_op_{i}.tar"
        path.write_bytes(b"x")
        (tmp_path / f"r_op_{i}.tar.json").write_text("{}")
        os.utime(path, (1000 + i, 1000 + i))
        made.append(path)
    other = tmp_path / "r_other_0.tar"
    other.write_bytes(b"x")
    removed = node_buildkit.prune_built(tmp_path, "r/op", keep=made[3], now=1000 + 3600.5)
    assert removed == [made[0]], "the build used within the hour stays, though beyond the newest two"
    removed = node_buildkit.prune_built(tmp_path, "r/op", keep=made[3], now=1000 + 3601.5)
    assert removed == [made[1]]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["r_op_2.tar", "r_op_3.tar", "r_other_0.tar"]
    assert not (tmp_path / "r_op_0.tar.json").exists()


def test_a_second_build_waits_for_the_first_and_fails_naming_the_lock(tmp_path: Path) -> None:
    state = tmp_path / "buildkit-state"
    told: list[str] = []
    with node_buildkit.state_lock(state, timeout=1), \
            pytest.raises(ClusterError, match=r"another image build holds .*buildkit-state.lock"), \
            node_buildkit.state_lock(state, timeout=0.6, say=told.append):
        pass
    assert told and "waiting for another image build" in told[0]
    with node_buildkit.state_lock(state, timeout=0.1):  # free again once the first is done
        pass


def test_socket_folders_of_killed_builds_are_swept_and_nothing_else(tmp_path: Path) -> None:
    stale = tmp_path / (node_buildkit.SOCKET_DIR_PREFIX + "abc123")
    (stale / "sub").mkdir(parents=True)
    (stale / "buildkitd.log").write_text("left by a killed owner")
    other = tmp_path / "pet-harness-node-xyz"
    other.mkdir()
    file_named_alike = tmp_path / (node_buildkit.SOCKET_DIR_PREFIX + "file")
    file_named_alike.write_text("not a folder")
    assert node_buildkit.sweep_socket_dirs(tmp_path) == [stale]
    assert not stale.exists() and other.is_dir() and file_named_alike.is_file()
