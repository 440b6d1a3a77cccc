"""Fuzzing the admission webhook straight at its TLS port, as the API server (or anyone who can
reach the port) would talk to it.

The properties: a well-formed AdmissionReview always gets a well-formed AdmissionReview answer
carrying its uid; anything else gets a 4xx (or, for a review that is only odd inside, a
well-formed answer); never a 5xx, never silence; and a client that trickles one byte a second
neither stops others from being answered nor keeps its connection for ever.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import time
import uuid
from typing import Any

from hypothesis import strategies as st

from pet_harness.fuzz.strategies import Example, encode, json_values, names
from pet_harness.kube import GROUP, GROUP_VERSION, PETS, VERSION

PATHS = ("/validate-pets", "/mutate-pets")


def _context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # loopback only; the certificate's trust is tested elsewhere
    return ctx


def post(port: int, path: str, body: bytes, timeout: float = 15.0, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body); status 0 with the error text if none came."""
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=_context())
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}".encode()
    finally:
        conn.close()


def review(namespace: str, obj: Any, operation: str = "CREATE", old: Any = None, uid: str | None = None,
           api_version: str = "admission.k8s.io/v1", dry_run: bool = True) -> dict[str, Any]:
    name = obj.get("metadata", {}).get("name", "x") if isinstance(obj, dict) else "x"
    return {
        "apiVersion": api_version, "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": GROUP, "version": VERSION, "kind": "Pet"},
            "resource": {"group": GROUP, "version": VERSION, "resource": PETS},
            "requestKind": {"group": GROUP, "version": VERSION, "kind": "Pet"},
            "operation": operation, "namespace": namespace, "name": name,
            "userInfo": {"username": "fuzz"}, "object": obj, "oldObject": old, "dryRun": dry_run,
        },
    }


@st.composite
def reviews(draw: st.DrawFn, namespace: str, pet_specs: st.SearchStrategy[Any]) -> Example:
    """AdmissionReviews: well-formed ones (an object the API server could send), odd ones (wrong
    apiVersion, fields of the wrong type, arbitrary JSON inside) and garbage (not JSON, truncated,
    arbitrary JSON, over the size limit)."""
    kind = draw(st.sampled_from(["valid", "odd", "garbage"]))
    pet = {"apiVersion": GROUP_VERSION, "kind": "Pet",
           "metadata": {"name": draw(names), "namespace": namespace}, "spec": draw(pet_specs)}
    if kind == "valid":
        operation = draw(st.sampled_from(["CREATE", "UPDATE", "DELETE"]))
        old = json.loads(json.dumps(pet)) if operation != "CREATE" else None
        obj = None if operation == "DELETE" else pet
        doc = review(namespace, obj, operation, old)
        return Example("valid", "reviews", encode(doc), doc, label=operation)
    if kind == "odd":
        doc = review(namespace, pet)
        how = draw(st.sampled_from(["apiVersion", "request field", "object", "spec", "no uid", "namespace"]))
        if how == "apiVersion":
            doc["apiVersion"] = draw(st.sampled_from(["admission.k8s.io/v1beta1", "v1", "", None, 5]))
        elif how == "request field":
            key = draw(st.sampled_from(["operation", "namespace", "name", "object", "oldObject", "uid"]))
            doc["request"][key] = draw(json_values)
        elif how == "object":
            doc["request"]["object"] = draw(json_values)
        elif how == "spec":
            doc["request"]["object"]["spec"] = draw(json_values)
        elif how == "no uid":
            del doc["request"]["uid"]
        else:
            doc["request"]["namespace"] = draw(st.sampled_from(["", "kube-system", "x" * 300, "ns\n"]))
        return Example("odd", "reviews", encode(doc), doc, label=how)
    how = draw(st.sampled_from(["json", "truncated", "not utf-8", "deep", "huge", "empty"]))
    if how == "json":
        anything: Any = draw(json_values)
        return Example("garbage", "reviews", encode(anything), anything, label=how)
    if how == "truncated":
        full = encode(review(namespace, pet))
        return Example("garbage", "reviews", full[: draw(st.integers(0, len(full) - 1))], label=how)
    if how == "not utf-8":
        return Example("garbage", "reviews", b'{"request":{"uid":"\xff\xfe"}}', label=how)
    if how == "deep":
        depth = draw(st.sampled_from([2_000, 100_000]))
        return Example("garbage", "reviews", b'{"request":' + b"[" * depth + b"]" * depth + b"}", label=how)
    if how == "huge":
        size = draw(st.sampled_from([7 * 1024 * 1024, 37 * 1024 * 1024]))  # the limit is 36.25 MiB
        return Example("garbage", "reviews", b'{"request":{"uid":"' + b"a" * size + b'"}}', label=f"{how} {size}")
    return Example("garbage", "reviews", b"", label=how)


def answer_problems(example: Example, status: int, body: bytes) -> list[str]:
    if status == 0:
        return [f"no answer: {body.decode(errors='replace')}"]
    if status >= 500:
        return [f"answered {status}: {body[:300]!r}"]
    doc: Any = None
    with contextlib.suppress(ValueError):
        doc = json.loads(body)
    well_formed = (isinstance(doc, dict) and doc.get("apiVersion") == "admission.k8s.io/v1"
                   and doc.get("kind") == "AdmissionReview" and isinstance(doc.get("response"), dict)
                   and isinstance(doc["response"].get("allowed"), bool))
    uid = ((example.doc or {}).get("request") or {}).get("uid") if isinstance(example.doc, dict) else None
    if example.kind == "valid":
        if status != 200 or not well_formed:
            return [f"a well-formed review got {status}: {body[:300]!r}"]
        if doc["response"].get("uid") != uid:
            return [f"the answer's uid {doc['response'].get('uid')!r} is not the review's {uid!r}"]
        return []
    if 400 <= status < 500:
        return []
    if status == 200 and well_formed and example.kind == "odd" and isinstance(uid, str) and uid:
        return [] if doc["response"].get("uid") == uid else ["an odd review's answer lost its uid"]
    return [f"a {example.kind} review ({example.label}) got {status}, not a 4xx: {body[:300]!r}"]


def trickle(port: int, seconds: float, host: str = "127.0.0.1") -> float | None:
    """Send a request's first line one byte a second for at most ``seconds``; the time after which
    the server closed the connection, or None if it was still open at the end."""
    raw = socket.create_connection((host, port), timeout=5)
    started = time.monotonic()
    try:
        conn = _context().wrap_socket(raw, server_hostname=host)
        conn.settimeout(1.0)
        line = b"POST /validate-pets HTTP/1.1\r\nHost: x\r\n"
        i = 0
        while time.monotonic() - started < seconds:
            try:
                conn.sendall(line[i % len(line): i % len(line) + 1])
                i += 1
                data = conn.recv(1024)
                if not data:
                    return time.monotonic() - started
            except TimeoutError:
                continue
            except (ssl.SSLError, OSError):
                return time.monotonic() - started
        return None
    except (ssl.SSLError, OSError):
        return time.monotonic() - started
    finally:
        raw.close()
