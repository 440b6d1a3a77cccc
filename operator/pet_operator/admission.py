"""Admission rules for Pets (pure): allowed tags of the store, and ids already held.

The webhook server (:mod:`pet_operator.webhook`) fetches what these rules need and
turns their verdict into an AdmissionReview response.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pet_operator.claims import Claim
from pet_operator.model import StoreView, describe_allowed, disallowed_tags


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    message: str = ""
    code: int = 200
    #: the rule(s) that denied, a name from a small fixed set (the metrics' ``rule`` label)
    rule: str = ""


#: rule names of denials (the contract's reasons where it has one)
RULE_TAGS = "TagsNotAllowed"
RULE_ID = "DuplicateId"
RULE_NOT_SERVED = "NamespaceNotServed"
RULE_TIMEOUT = "DecisionTimeout"
RULE_ERROR = "DecisionError"


ALLOW = Decision(True)


class BadReview(ValueError):
    """The body is not an AdmissionReview the webhook can decide on; the message says what is wrong."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"expected an AdmissionReview with a request: {detail}")


def _expect(value: Any, kinds: type | tuple[type, ...], path: str, what: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise BadReview(f"{path} must be {what}, not {type(value).__name__}")


def _check_object(obj: Any, path: str) -> None:
    _expect(obj, dict, path, "an object")
    if obj is None:
        return
    meta = obj.get("metadata")
    _expect(meta, dict, f"{path}.metadata", "an object")
    if meta is not None:
        _expect(meta.get("name"), str, f"{path}.metadata.name", "a string")
    spec = obj.get("spec")
    _expect(spec, dict, f"{path}.spec", "an object")
    if spec is None:
        return
    tags = spec.get("tags")
    _expect(tags, list, f"{path}.spec.tags", "a list of strings")
    if tags is not None and not all(isinstance(tag, str) for tag in tags):
        raise BadReview(f"{path}.spec.tags must be a list of strings")
    _expect(spec.get("store"), str, f"{path}.spec.store", "a string")


REVIEW_API_VERSION = "admission.k8s.io/v1"
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
MAX_UID_LENGTH = 256  # the API server sends a UUID (36 characters)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_review(data: bytes) -> tuple[str, dict[str, Any]]:
    """The uid and request of an AdmissionReview body, every field the webhook reads checked for
    its type (:class:`BadReview` otherwise): a malformed body is the sender's error (400), never
    the webhook's (500)."""
    try:
        review = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadReview(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise BadReview("the body is nested too deeply") from None
    except ValueError as exc:
        raise BadReview(f"the body is not JSON ({exc})") from None
    if not isinstance(review, dict) or not isinstance(review.get("request"), dict):
        raise BadReview("no request object")
    # only what the API server sends (admissionReviewVersions: v1): anything else is answered 400,
    # never "allowed" (fuzzing found a bare {"request": {"uid": ...}} answered 200 allowed)
    if review.get("apiVersion") != REVIEW_API_VERSION:
        raise BadReview(f"apiVersion must be {REVIEW_API_VERSION!r}, not {_shown(review.get('apiVersion'))}")
    if review.get("kind") != "AdmissionReview":
        raise BadReview(f"kind must be 'AdmissionReview', not {_shown(review.get('kind'))}")
    req: dict[str, Any] = review["request"]
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > MAX_UID_LENGTH:
        raise BadReview(f"request.uid must be a non-empty string of at most {MAX_UID_LENGTH} characters")
    for key in ("operation", "namespace", "name"):
        _expect(req.get(key), str, f"request.{key}", "a string")
    if req.get("operation") not in OPERATIONS:
        raise BadReview(f"request.operation must be one of {', '.join(OPERATIONS)}, "
                        f"not {_shown(req.get('operation'))}")
    _check_object(req.get("object"), "request.object")
    _check_object(req.get("oldObject"), "request.oldObject")
    return uid, req


def tags_changed(old_spec: Mapping[str, Any] | None, new_spec: Mapping[str, Any]) -> bool:
    return old_spec is None or set(old_spec.get("tags") or []) != set(new_spec.get("tags") or [])


def tags_or_store_changed(old_spec: Mapping[str, Any] | None, new_spec: Mapping[str, Any]) -> bool:
    """A pet moving to another store must fit that store's allowedTags, as a new pet would."""
    return tags_changed(old_spec, new_spec) or (old_spec or {}).get("store") != new_spec.get("store")


def review_pet(
    operation: str,
    namespace: str,
    name: str,
    new: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    store: StoreView | None,
    claim: Claim | None,
) -> Decision:
    """Decide on a CREATE or UPDATE of a pet.

    * Tags are checked when a pet is created or its tags or store change, never on other updates:
      a store that narrows ``allowedTags`` later turns its pets ``Invalid`` instead, and
      those pets must stay updatable (finalizers, labels) and deletable.
    * The id is checked on CREATE only (it is immutable): a claim held by another pet
      rejects the create; a claim of a pet with this very namespace/name is a stale one
      of a pet being recreated, which the controller sorts out.
    """
    if operation not in ("CREATE", "UPDATE") or new is None:
        return ALLOW
    if (new.get("metadata") or {}).get("deletionTimestamp"):
        return ALLOW
    spec = new.get("spec") or {}
    problems: list[str] = []
    rules: list[str] = []
    old_spec = (old or {}).get("spec") if operation == "UPDATE" else None
    if store is not None and tags_or_store_changed(old_spec, spec):
        bad = disallowed_tags(list(spec.get("tags") or []), store.allowed_tags)
        if bad:
            problems.append(
                f"tags {', '.join(repr(t) for t in bad)} are not allowed by PetStore {store.name!r}, "
                f"which allows {describe_allowed(store.allowed_tags)}"
            )
            rules.append(RULE_TAGS)
    if operation == "CREATE" and claim is not None and claim.holder != f"{namespace}/{name}":
        problems.append(
            f"spec.id {spec.get('id')} is already held by {holder_for(namespace, claim)}; "
            "ids are unique across all namespaces"
        )
        rules.append(RULE_ID)
    if not problems:
        return ALLOW
    return Decision(False, "; ".join(problems), 422, "+".join(rules))


def holder_for(namespace: str, claim: Claim) -> str:
    """The holder as the requester may see it: named in its own namespace only. A denial must not
    tell someone who creates pets in one namespace what exists in another."""
    holder_namespace, _ = claim.holder_key
    if holder_namespace == namespace:
        return f"pet {claim.holder}"
    return "a pet in another namespace"


def not_served(namespace: str) -> Decision:
    return Decision(False, f"namespace {namespace!r} is not served by this pet-operator", 403, RULE_NOT_SERVED)


def review_response(uid: str, decision: Decision) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if not decision.allowed:
        response["status"] = {"code": decision.code, "reason": "Invalid", "message": decision.message}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
