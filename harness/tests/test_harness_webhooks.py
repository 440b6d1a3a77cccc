"""webhooks: the harness registers the shipped Validating- and MutatingWebhookConfiguration, only
re-pointed; the shipped mutating configuration's settings."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from pet_harness import webhooks
from pet_harness.kube import load_yaml_documents


def test_the_configuration_keeps_every_shipped_setting_but_the_address_and_namespaces() -> None:
    shipped = load_yaml_documents(webhooks.TEMPLATE)[0]["webhooks"][0]
    body = webhooks.webhook_configuration("hook", ["a", "b"], "https://127.0.0.1:1234/validate-pets", b"CA")
    hook = body["webhooks"][0]
    assert body["metadata"] == {"name": "hook"}
    assert hook["clientConfig"] == {"url": "https://127.0.0.1:1234/validate-pets",
                                    "caBundle": base64.b64encode(b"CA").decode()}
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["a", "b"]
    for key in ("failurePolicy", "timeoutSeconds", "rules", "matchConditions", "sideEffects"):
        assert hook[key] == shipped[key], key


def test_deletes_and_spec_preserving_updates_are_kept_from_the_webhook() -> None:
    conditions = {c["name"]: c["expression"] for c in load_yaml_documents(webhooks.TEMPLATE)[0]["webhooks"][0][
        "matchConditions"]}
    assert conditions["not-being-deleted"] == "!has(object.metadata.deletionTimestamp)"
    assert "object.spec != oldObject.spec" in conditions["create-or-spec-changed"]


# --- the mutating configuration --------------------------------------------------------------


def mutating_shipped() -> dict[str, Any]:
    docs = load_yaml_documents(webhooks.MUTATING_TEMPLATE)
    assert len(docs) == 1
    doc: dict[str, Any] = docs[0]
    return doc


def test_the_shipped_mutating_configuration_only_adds_the_finalizer_at_create_and_never_blocks() -> None:
    doc = mutating_shipped()
    assert (doc["apiVersion"], doc["kind"]) == ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration")
    [hook] = doc["webhooks"]
    assert hook["failurePolicy"] == "Ignore"  # the operator adds the finalizer itself when no replica answers
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["reinvocationPolicy"] == "Never"
    assert 1 <= hook["timeoutSeconds"] <= 5
    assert hook["rules"] == [{"apiGroups": ["petstore.example.com"], "apiVersions": ["v1"],
                              "operations": ["CREATE"], "resources": ["pets"], "scope": "Namespaced"}]
    assert hook["clientConfig"]["service"]["path"] == "/mutate-pets"


def test_the_mutating_configuration_is_reached_and_scoped_like_the_validating_one() -> None:
    validating = load_yaml_documents(webhooks.TEMPLATE)[0]
    mutating = mutating_shipped()
    assert mutating["metadata"] == validating["metadata"]  # same name, same cert-manager CA injection
    v_hook, m_hook = validating["webhooks"][0], mutating["webhooks"][0]
    for key in ("name", "namespace", "port"):
        assert m_hook["clientConfig"]["service"][key] == v_hook["clientConfig"]["service"][key], key
    for key in ("namespaceSelector", "matchPolicy"):
        assert m_hook[key] == v_hook[key], key


def test_the_mutating_configuration_keeps_every_shipped_setting_but_the_address_and_namespaces() -> None:
    shipped = mutating_shipped()["webhooks"][0]
    body = webhooks.mutating_configuration("hook", ["a"], "https://127.0.0.1:1234/mutate-pets", None)
    assert (body["kind"], body["metadata"]) == ("MutatingWebhookConfiguration", {"name": "hook"})
    hook = body["webhooks"][0]
    assert hook["clientConfig"] == {"url": "https://127.0.0.1:1234/mutate-pets"}
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["a"]
    for key in ("failurePolicy", "timeoutSeconds", "rules", "sideEffects", "reinvocationPolicy", "name"):
        assert hook[key] == shipped[key], key


def test_configurations_are_both_kinds_at_their_paths() -> None:
    validating, mutating = webhooks.configurations("hook", ["a"], "https://127.0.0.1:9/", b"CA")
    assert validating["kind"] == "ValidatingWebhookConfiguration"
    assert mutating["kind"] == "MutatingWebhookConfiguration"
    assert validating["webhooks"][0]["clientConfig"]["url"] == "https://127.0.0.1:9/validate-pets"
    assert mutating["webhooks"][0]["clientConfig"]["url"] == "https://127.0.0.1:9/mutate-pets"
    assert {validating["metadata"]["name"], mutating["metadata"]["name"]} == {"hook"}


class FakeAdmission:
    """AdmissionregistrationV1Api, recording calls; names in ``existing`` (kind word, name) exist."""

    def __init__(self, existing: set[tuple[str, str]]) -> None:
        self.existing = existing
        self.calls: list[tuple[str, str, str]] = []

    def __getattr__(self, attr: str) -> Any:
        verb, word, *_ = attr.split("_")

        def call(name_or_body: Any, body: Any = None) -> Any:
            name = name_or_body if isinstance(name_or_body, str) else name_or_body["metadata"]["name"]
            self.calls.append((verb, word, name))
            if verb == "create" and (word, name) in self.existing:
                raise ApiException(status=409)
            if verb in ("delete", "read") and (word, name) not in self.existing:
                raise ApiException(status=404)
            return SimpleNamespace(metadata=SimpleNamespace(resource_version="7"))

        return call


def test_install_creates_or_replaces_each_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeAdmission({("mutating", "hook")})
    monkeypatch.setattr(webhooks.client, "AdmissionregistrationV1Api", lambda _api: fake)
    validating, mutating = webhooks.configurations("hook", ["a"], "https://127.0.0.1:9", None)
    webhooks.install(None, validating)
    webhooks.install(None, mutating)
    assert fake.calls == [("create", "validating", "hook"),
                          ("create", "mutating", "hook"), ("read", "mutating", "hook"),
                          ("replace", "mutating", "hook")]
    assert mutating["metadata"]["resourceVersion"] == "7"


def test_install_refuses_another_kind() -> None:
    with pytest.raises(ValueError, match="not a webhook configuration kind: 'ConfigMap'"):
        webhooks.install(None, {"kind": "ConfigMap", "metadata": {"name": "x"}})


def test_uninstall_removes_both_kinds_and_tolerates_either_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeAdmission({("validating", "hook")})
    monkeypatch.setattr(webhooks.client, "AdmissionregistrationV1Api", lambda _api: fake)
    webhooks.uninstall(None, "hook")
    assert fake.calls == [("delete", "validating", "hook"), ("delete", "mutating", "hook")]


def test_register_installs_both_and_waits_for_both(monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[Any] = []
    monkeypatch.setattr(webhooks, "install", lambda _api, body: done.append(("install", body["kind"])))
    monkeypatch.setattr(webhooks, "wait_effective", lambda _api, ns, timeout: done.append(("validating", ns)))
    monkeypatch.setattr(webhooks, "wait_mutating", lambda _api, ns, timeout: done.append(("mutating", ns)))
    webhooks.register(None, "hook", ["a", "b"], "https://127.0.0.1:9", None)
    assert done == [("install", "ValidatingWebhookConfiguration"), ("install", "MutatingWebhookConfiguration"),
                    ("validating", "a"), ("mutating", "a")]
