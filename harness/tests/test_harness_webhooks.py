"""webhooks: the harness registers the shipped ValidatingWebhookConfiguration, only re-pointed."""

from __future__ import annotations

import base64

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
