"""The pure decisions of pet_operator.model, rule by rule of the Pet API contract."""

from __future__ import annotations

import pytest

from pet_operator import model
from pet_operator.model import (
    Condition,
    IdClaim,
    Phase,
    Reason,
    StoreView,
    disallowed_tags,
    evaluate_pet,
    merge_conditions,
    pet_status,
    status_differs,
    store_status,
)

T0 = "2024-01-01T00:00:00Z"
T1 = "2024-01-01T00:05:00Z"

HELD = IdClaim("False", "DuplicateId", "Id 7 is already held by other-ns/rex.", holder="other-ns/rex")
CLAIMED = IdClaim("True", "Claimed", "This pet holds id 7.")


def conditions_of(verdict: model.Verdict) -> dict[str, Condition]:
    return {c.type: c for c in verdict.conditions}


# --- disallowed_tags / StoreView ----------------------------------------------------------


def test_disallowed_tags_none_allows_every_tag() -> None:
    assert disallowed_tags(["a", "b"], None) == []


def test_disallowed_tags_empty_list_allows_no_tag() -> None:
    assert disallowed_tags(["a", "b"], []) == ["a", "b"]


def test_disallowed_tags_keeps_the_pets_order_and_only_offenders() -> None:
    assert disallowed_tags(["z", "ok", "a"], ["ok"]) == ["z", "a"]
    assert disallowed_tags([], ["ok"]) == []


def test_store_view_tells_absent_allowed_tags_from_empty_list() -> None:
    assert StoreView.from_body("s", {}).allowed_tags is None
    assert StoreView.from_body("s", {"allowedTags": None}).allowed_tags is None
    assert StoreView.from_body("s", {"allowedTags": []}).allowed_tags == ()
    assert StoreView.from_body("s", {"allowedTags": ["a", "b"]}).allowed_tags == ("a", "b")


# --- evaluate_pet: each phase -------------------------------------------------------------


def test_pet_without_store_is_active_with_any_tags() -> None:
    verdict = evaluate_pet("rex", {"id": 1, "name": "rex", "tags": ["x", "y"]}, None)
    assert verdict.phase is Phase.ACTIVE
    assert verdict.reason == Reason.RECONCILED.value == "Reconciled"
    assert "'rex'" in verdict.message
    conds = conditions_of(verdict)
    assert [c.type for c in verdict.conditions] == ["Ready", "IdClaimed", "TagsValid"]
    assert conds["Ready"].status == "True"
    assert conds["Ready"].reason == "Reconciled"
    assert conds["TagsValid"].status == "True"
    assert conds["TagsValid"].reason == "NoStore"


def test_pet_in_existing_store_with_allowed_tags_is_active() -> None:
    verdict = evaluate_pet("rex", {"id": 1, "store": "shop", "tags": ["a"]}, StoreView("shop", ("a", "b")))
    assert verdict.phase is Phase.ACTIVE
    tags = conditions_of(verdict)["TagsValid"]
    assert (tags.status, tags.reason) == ("True", "TagsAllowed")
    assert "'shop'" in tags.message


def test_store_without_allowed_tags_allows_any_tag() -> None:
    verdict = evaluate_pet("rex", {"id": 1, "store": "shop", "tags": ["whatever", "else"]}, StoreView("shop", None))
    assert verdict.phase is Phase.ACTIVE
    assert conditions_of(verdict)["TagsValid"].status == "True"


def test_store_with_empty_allowed_tags_allows_no_tag() -> None:
    verdict = evaluate_pet("rex", {"id": 1, "store": "shop", "tags": ["a"]}, StoreView("shop", ()))
    assert verdict.phase is Phase.INVALID
    assert verdict.reason == "TagsNotAllowed"
    assert "'a'" in verdict.message
    assert "no tags at all" in verdict.message


def test_store_with_empty_allowed_tags_keeps_a_pet_without_tags_active() -> None:
    assert evaluate_pet("rex", {"id": 1, "store": "shop"}, StoreView("shop", ())).phase is Phase.ACTIVE
    assert evaluate_pet("rex", {"id": 1, "store": "shop", "tags": []}, StoreView("shop", ())).phase is Phase.ACTIVE


def test_missing_store_is_pending_and_names_the_store() -> None:
    verdict = evaluate_pet("rex", {"id": 1, "store": "nowhere", "tags": ["a"]}, None)
    assert verdict.phase is Phase.PENDING
    assert verdict.reason == "StoreNotFound"
    assert "'nowhere'" in verdict.message
    assert "does not exist" in verdict.message
    conds = conditions_of(verdict)
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "StoreNotFound")
    # tags cannot be judged without the store: Unknown, not True or False
    assert (conds["TagsValid"].status, conds["TagsValid"].reason) == ("Unknown", "StoreNotFound")
    assert "'nowhere'" in conds["TagsValid"].message


def test_disallowed_tags_are_invalid_and_message_names_offenders_and_allowed_set() -> None:
    verdict = evaluate_pet(
        "rex", {"id": 1, "store": "shop", "tags": ["b", "bad", "a", "worse"]}, StoreView("shop", ("b", "a"))
    )
    assert verdict.phase is Phase.INVALID
    assert verdict.reason == "TagsNotAllowed"
    assert "'bad', 'worse'" in verdict.message
    assert "'a'," not in verdict.message  # allowed tags are not reported as offenders
    assert "[a, b]" in verdict.message  # the allowed set, sorted
    assert "'shop'" in verdict.message
    conds = conditions_of(verdict)
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "TagsNotAllowed")
    assert (conds["TagsValid"].status, conds["TagsValid"].reason) == ("False", "TagsNotAllowed")
    assert "'bad', 'worse'" in conds["TagsValid"].message


def test_id_held_elsewhere_is_conflict_naming_the_holder() -> None:
    verdict = evaluate_pet("rex", {"id": 1, "store": "shop"}, StoreView("shop", None), HELD)
    assert verdict.phase is Phase.CONFLICT
    assert verdict.reason == "DuplicateId"
    assert "other-ns/rex" in verdict.message
    conds = conditions_of(verdict)
    assert (conds["IdClaimed"].status, conds["IdClaimed"].reason) == ("False", "DuplicateId")
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "DuplicateId")


def test_unenforced_claim_is_reported_unknown_never_faked_as_held() -> None:
    verdict = evaluate_pet("rex", {"id": 1}, None)
    conds = conditions_of(verdict)
    assert conds["IdClaimed"].status == "Unknown"
    assert conds["IdClaimed"].reason == model.ID_CLAIM_NOT_ENFORCED.reason


def test_claimed_id_is_passed_through_to_the_condition() -> None:
    verdict = evaluate_pet("rex", {"id": 1}, None, CLAIMED)
    assert verdict.phase is Phase.ACTIVE
    assert conditions_of(verdict)["IdClaimed"] == Condition("IdClaimed", "True", "Claimed", CLAIMED.message)


# --- evaluate_pet: precedence (InvalidId >) Conflict > Pending > Invalid > Active -----------------------


@pytest.mark.parametrize(
    ("claim", "spec", "store", "phase"),
    [
        # everything wrong at once: the id wins
        (HELD, {"id": 1, "store": "gone", "tags": ["bad"]}, None, Phase.CONFLICT),
        # id and tags wrong: still the id
        (HELD, {"id": 1, "store": "shop", "tags": ["bad"]}, StoreView("shop", ("ok",)), Phase.CONFLICT),
        # store missing beats tags (which cannot even be checked)
        (CLAIMED, {"id": 1, "store": "gone", "tags": ["bad"]}, None, Phase.PENDING),
        # tags are the only problem
        (CLAIMED, {"id": 1, "store": "shop", "tags": ["bad"]}, StoreView("shop", ("ok",)), Phase.INVALID),
        # nothing wrong
        (CLAIMED, {"id": 1, "store": "shop", "tags": ["ok"]}, StoreView("shop", ("ok",)), Phase.ACTIVE),
        # no usable id: before all, whatever the claim says
        (HELD, {"id": "1", "store": "gone", "tags": ["bad"]}, None, Phase.INVALID),
        (CLAIMED, {"id": 0, "store": "shop", "tags": ["ok"]}, StoreView("shop", ("ok",)), Phase.INVALID),
    ],
    ids=["conflict-over-all", "conflict-over-invalid", "pending-over-invalid", "invalid", "active",
         "invalid-id-over-all", "invalid-id-even-if-claimed"],
)
def test_phase_precedence(
    claim: IdClaim, spec: dict[str, object], store: StoreView | None, phase: Phase
) -> None:
    verdict = evaluate_pet("rex", spec, store, claim)
    assert verdict.phase is phase
    ready = conditions_of(verdict)["Ready"]
    assert ready.status == ("True" if phase is Phase.ACTIVE else "False")
    assert ready.reason == verdict.reason
    assert ready.message == verdict.message


def test_conflict_still_reports_tag_problems_in_the_tags_condition() -> None:
    verdict = evaluate_pet("rex", {"id": 1, "store": "shop", "tags": ["bad"]}, StoreView("shop", ("ok",)), HELD)
    assert verdict.phase is Phase.CONFLICT
    assert conditions_of(verdict)["TagsValid"].status == "False"


# --- pet_status: lastTransitionTime, observedGeneration -----------------------------------


def test_pet_status_first_write_stamps_now_everywhere() -> None:
    verdict = evaluate_pet("rex", {"id": 1}, None)
    status = pet_status(None, verdict, 3, T0)
    assert status["phase"] == "Active"
    assert status["reason"] == "Reconciled"
    assert status["message"] == verdict.message
    assert status["observedGeneration"] == 3
    assert status["lastTransitionTime"] == T0
    assert [c["type"] for c in status["conditions"]] == ["Ready", "IdClaimed", "TagsValid"]
    for cond in status["conditions"]:
        assert cond["lastTransitionTime"] == T0
        assert cond["observedGeneration"] == 3
        assert set(cond) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }


def test_pet_status_keeps_transition_time_while_phase_holds() -> None:
    verdict = evaluate_pet("rex", {"id": 1}, None)
    first = pet_status(None, verdict, 1, T0)
    second = pet_status(first, verdict, 2, T1)
    assert second["lastTransitionTime"] == T0
    assert all(c["lastTransitionTime"] == T0 for c in second["conditions"])
    # observedGeneration follows the generation described even when nothing else changes
    assert second["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in second["conditions"])


def test_pet_status_moves_transition_time_when_phase_changes() -> None:
    pending = pet_status(None, evaluate_pet("rex", {"id": 1, "store": "shop"}, None), 1, T0)
    active = pet_status(pending, evaluate_pet("rex", {"id": 1, "store": "shop"}, StoreView("shop", None)), 1, T1)
    assert pending["phase"] == "Pending"
    assert active["phase"] == "Active"
    assert active["lastTransitionTime"] == T1
    conds = {c["type"]: c for c in active["conditions"]}
    assert conds["Ready"]["lastTransitionTime"] == T1  # False -> True
    assert conds["TagsValid"]["lastTransitionTime"] == T1  # Unknown -> True
    assert conds["IdClaimed"]["lastTransitionTime"] == T0  # Unknown -> Unknown: kept


def test_pet_status_transition_time_follows_the_phase_not_the_reason() -> None:
    current = {"phase": "Active", "reason": "SomeOlderReason", "lastTransitionTime": T0}
    status = pet_status(current, evaluate_pet("rex", {"id": 1}, None), 1, T1)
    assert status["reason"] == "Reconciled"
    assert status["lastTransitionTime"] == T0


def test_pet_status_stamps_now_when_current_lacks_a_transition_time() -> None:
    verdict = evaluate_pet("rex", {"id": 1}, None)
    status = pet_status({"phase": "Active"}, verdict, 1, T1)
    assert status["lastTransitionTime"] == T1


def test_pet_status_phase_change_between_not_ready_phases_moves_phase_time_only() -> None:
    pending = pet_status(None, evaluate_pet("rex", {"id": 1, "store": "shop", "tags": ["x"]}, None), 1, T0)
    invalid = pet_status(
        pending, evaluate_pet("rex", {"id": 1, "store": "shop", "tags": ["x"]}, StoreView("shop", ())), 1, T1
    )
    assert invalid["phase"] == "Invalid"
    assert invalid["lastTransitionTime"] == T1
    ready = next(c for c in invalid["conditions"] if c["type"] == "Ready")
    # Ready stayed "False" (only its reason changed): its own transition time holds
    assert ready["status"] == "False"
    assert ready["reason"] == "TagsNotAllowed"
    assert ready["lastTransitionTime"] == T0


# --- merge_conditions -----------------------------------------------------------------------


def test_merge_conditions_per_condition_transition_times() -> None:
    current = [
        {"type": "A", "status": "True", "reason": "r", "message": "m", "lastTransitionTime": T0},
        {"type": "B", "status": "True", "reason": "r", "message": "m", "lastTransitionTime": T0},
        {"type": "Gone", "status": "True", "reason": "r", "message": "m", "lastTransitionTime": T0},
    ]
    desired = [
        Condition("A", "True", "r2", "m2"),  # same status, new reason: time kept
        Condition("B", "False", "r", "m"),  # status flipped: time moves
        Condition("C", "Unknown", "r", "m"),  # new condition: now
    ]
    merged = merge_conditions(current, desired, 5, T1)
    by_type = {c["type"]: c for c in merged}
    assert list(by_type) == ["A", "B", "C"]  # the desired set, in order; stale ones dropped
    assert by_type["A"]["lastTransitionTime"] == T0
    assert (by_type["A"]["reason"], by_type["A"]["message"]) == ("r2", "m2")
    assert by_type["B"]["lastTransitionTime"] == T1
    assert by_type["C"]["lastTransitionTime"] == T1
    assert all(c["observedGeneration"] == 5 for c in merged)


def test_merge_conditions_stamps_now_when_old_condition_has_no_time() -> None:
    merged = merge_conditions([{"type": "A", "status": "True"}], [Condition("A", "True", "r", "m")], 1, T1)
    assert merged[0]["lastTransitionTime"] == T1


def test_merge_conditions_accepts_no_current_conditions() -> None:
    assert merge_conditions(None, [], 1, T0) == []
    merged = merge_conditions(None, [Condition("A", "True", "r", "m")], 1, T0)
    assert merged == [
        {
            "type": "A",
            "status": "True",
            "reason": "r",
            "message": "m",
            "observedGeneration": 1,
            "lastTransitionTime": T0,
        },
    ]


# --- status_differs ----------------------------------------------------------------------


def test_status_differs() -> None:
    desired = {"phase": "Active", "observedGeneration": 2}
    assert status_differs(None, desired)
    assert status_differs({}, desired)
    assert not status_differs({"phase": "Active", "observedGeneration": 2}, desired)
    assert status_differs({"phase": "Active", "observedGeneration": 1}, desired)
    assert status_differs({"phase": "Pending", "observedGeneration": 2}, desired)
    # fields the operator does not own are ignored
    assert not status_differs({"phase": "Active", "observedGeneration": 2, "other": 1}, desired)
    assert not status_differs({"anything": 1}, {})


def test_status_differs_compares_conditions_deeply() -> None:
    verdict = evaluate_pet("rex", {"id": 1}, None)
    status = pet_status(None, verdict, 1, T0)
    same = pet_status(status, verdict, 1, T1)
    assert not status_differs(status, same)
    changed = pet_status(status, evaluate_pet("other-name", {}, None), 1, T1)
    assert status_differs(status, changed)  # only a condition message differs


# --- store_status ----------------------------------------------------------------------------


def test_store_status_counts_pets_and_active_pets() -> None:
    status = store_status(None, ["Active", "Pending", "Active", None, "Invalid"], 4, T0)
    assert status["petCount"] == 5
    assert status["activeCount"] == 2
    assert status["observedGeneration"] == 4
    [ready] = status["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Reconciled")
    assert "5 pets" in ready["message"]
    assert "2 active" in ready["message"]
    assert ready["lastTransitionTime"] == T0


def test_store_status_empty_store() -> None:
    status = store_status(None, [], 1, T0)
    assert (status["petCount"], status["activeCount"]) == (0, 0)


def test_store_status_keeps_ready_transition_time_when_counts_change() -> None:
    first = store_status(None, ["Active"], 1, T0)
    second = store_status(first, ["Active", "Active"], 1, T1)
    assert second["activeCount"] == 2
    assert second["conditions"][0]["lastTransitionTime"] == T0
    assert status_differs(first, second)
    assert not status_differs(second, store_status(second, iter(["Active", "Active"]), 1, T1))


# --- ids the operator cannot use -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, "7", 7.0, True, 0, -3, 9007199254740992, [7]],
                         ids=["missing", "string", "float", "bool", "zero", "negative", "too-large", "list"])
def test_a_pet_without_a_usable_id_is_invalid_never_active(bad: object) -> None:
    spec: dict[str, object] = {"name": "rex"} if bad is None else {"id": bad, "name": "rex"}
    verdict = model.evaluate_pet("rex", spec, None)
    assert verdict.phase is model.Phase.INVALID
    assert verdict.reason == "InvalidId"
    assert "1 to 9007199254740991" in verdict.message
    ready = next(c for c in verdict.conditions if c.type == "Ready")
    assert ready.status == "False"


@pytest.mark.parametrize("good", [1, 9007199254740991])
def test_the_id_bounds_are_usable(good: int) -> None:
    assert model.usable_id(good) == good
    assert model.evaluate_pet("rex", {"id": good, "name": "rex"}, None).phase is model.Phase.ACTIVE
