"""The chaos load's account of its failed requests."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from pet_harness.pet_load import PetLoad, error_kind
from pet_harness.waiting import wait_for


def _api_error(status: int, reason: str, message: str | None) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "message": message}) if message is not None else "not json"
    return exc


def test_a_failed_request_is_named_by_status_reason_and_message() -> None:
    refused = _api_error(500, "Internal Server Error", 'Internal error occurred: failed calling webhook '
                         '"pets.petstore.example.com": failed to call webhook: Post "https://pet-operator-webhook..."')
    assert error_kind(refused) == ('500 Internal Server Error: Internal error occurred: failed calling webhook '
                                   '"pets.petstore.example.com": fai'), "the message's first 80 characters"
    assert error_kind(_api_error(409, "Conflict", None)) == "409 Conflict: not json"
    assert error_kind(_api_error(404, "Not Found", "")) == "404 Not Found"
    assert error_kind(ConnectionResetError("reset")) == "ConnectionResetError"


class FailingPets:
    """Every create fails: twice refused by a webhook, then the connection goes."""

    def __init__(self) -> None:
        self.calls = 0

    def create_pet(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= 2:
            raise _api_error(500, "Internal Server Error", "failed calling webhook")
        raise ConnectionResetError("reset")


def test_the_load_counts_its_failures_by_kind() -> None:
    pets = FailingPets()
    load = PetLoad(pets, max_pets=3, interval=0)  # type: ignore[arg-type]
    load.start()
    try:
        wait_for(lambda: load.errors, lambda errors: errors >= 3, 10, "three failed creates")
    finally:
        load.stop()
    assert pets.calls == 3 and load.errors == 3 and not load.created
    assert load.error_kinds == {"500 Internal Server Error: failed calling webhook": 2, "ConnectionResetError": 1}
