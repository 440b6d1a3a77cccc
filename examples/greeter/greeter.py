"""A second, small operator that has nothing to do with pets: it greets.

A ``Greeting`` (``greetings.example.org/v1``) names someone in ``spec.name``; the operator
writes ``status.message`` ("Hello, <name>!") and ``status.observedGeneration``. It exists to
prove that pet-harness is a library: its e2e tests (``tests/``) use only the harness's public
API and its pytest plugin, from an installed wheel.

Run: ``kopf run greeter.py --namespace NS --liveness http://127.0.0.1:8080/healthz``.
"""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="greeter.example.org")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="greeter.example.org")
    settings.posting.level = 100  # no Events: the example keeps to its one resource


@kopf.on.resume("example.org", "v1", "greetings")
@kopf.on.create("example.org", "v1", "greetings")
@kopf.on.update("example.org", "v1", "greetings", field="spec")
def greet(spec: kopf.Spec, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    patch.status["message"] = f"Hello, {spec.get('name', 'nobody')}!"
    patch.status["observedGeneration"] = meta.get("generation")
