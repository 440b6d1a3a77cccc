"""pet_release: the values and versions of a Helm release of the operator (the release itself is
run by scenarios/test_helm_lifecycle.py on a node cluster)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from packaging.version import Version

from pet_harness import binaries, helm, pet_chart, pet_release
from pet_harness.pki import CertificateAuthority


@pytest.mark.parametrize(("version", "upgrade"), [
    ("0.1.0.dev7+gabc", "0.1.0.dev7+gabc.upgrade"),
    ("0.1.0.dev7+gabc.d20261206", "0.1.0.dev7+gabc.d20261206.upgrade"),
    ("0.2.0", "0.2.0+upgrade"),
])
def test_upgrade_version_is_another_valid_version(version: str, upgrade: str) -> None:
    assert pet_release.upgrade_version(version) == upgrade
    assert Version(upgrade) != Version(version)
    assert "+" in pet_chart.semver(upgrade)  # Helm takes it as a chart version


def test_release_values_point_at_the_image_and_the_ca() -> None:
    values = pet_release.release_values("pet-harness.local/pet-operator:abc123", ["shop"], b"PEM", replicas=2)
    assert values["image"] == {"repository": "pet-harness.local/pet-operator", "tag": "abc123", "pullPolicy": "Never"}
    assert values["webhookTLS"] == {"existingSecret": "pet-operator-webhook-tls",  # pragma: allowlist secret
                                    "caBundle": base64.b64encode(b"PEM").decode()}
    assert values["certManager"] == {"enabled": False} and values["watch"]["namespaces"] == ["shop"]


@pytest.mark.parametrize("reference", ["pet-operator", "registry:5000/pet-operator", ":tag"])
def test_release_values_refuse_a_reference_without_a_tag(reference: str) -> None:
    with pytest.raises(ValueError, match="is not repository:tag") as refused:
        pet_release.release_values(reference, ["shop"], b"PEM")
    assert reference in str(refused.value)


def test_the_chart_renders_the_release_values(tmp_path: Path) -> None:
    """What the lifecycle test installs: two replicas of the image, the Secret mounted, the CA in
    both configurations, from the chart stamped for the image."""
    binaries.ensure_helm(build=True)
    ca = CertificateAuthority("release-values-test")
    reference = "pet-harness.local/pet-operator:abc123"
    values = pet_release.release_values(reference, ["shop"], ca.cert_pem)
    chart = pet_release.stamped_chart("0.1.0.dev7+gabc", tmp_path)
    assert chart.name == "pet-operator-0.1.0-dev.7+gabc.tgz"
    objects = [m.body for m in helm.template(chart, pet_release.RELEASE, pet_release.NAMESPACE, [values]) if m.body]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "abc123"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == reference
    mounted = {"secretName": "pet-operator-webhook-tls"}  # pragma: allowlist secret - a name
    assert {"name": "webhook-tls", "secret": mounted} in pod["volumes"]
    bundles = {h["clientConfig"]["caBundle"] for o in objects if o["kind"].endswith("WebhookConfiguration")
               for h in o["webhooks"]}
    assert bundles == {base64.b64encode(ca.cert_pem).decode()}
