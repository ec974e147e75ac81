"""RED plans: whatever the model writes, only allow-listed, bounded actions are accepted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference.red_plan import PlanBounds, WorkerView, World, extract_plan, parse_plan


def world(**excluded: str) -> World:
    """Two CPU workers serving model m, one GPU worker serving m and g; default shares."""
    workers = {
        "w1": WorkerView("w1", "cpu-a", frozenset({"m"}), excluded.get("w1")),
        "w2": WorkerView("w2", "cpu-b", frozenset({"m"}), excluded.get("w2")),
        "w3": WorkerView("w3", "gpu-a", frozenset({"m", "g"}), excluded.get("w3")),
    }
    return World(workers=workers, class_shares={"gpu": 0.62, "cpu": 0.38})


def plan_of(*actions: Any, playbook: str | None = "notes") -> str:
    return json.dumps({"actions": list(actions), "playbook": playbook})


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "I think the pool is fine.",
        '{"actions": [{"action": "purge_l1"',
        '{"actions": [{"action": "purge_l1"}, {"action": "alert", "severity": "info", "mes',
        "[1, 2, 3]",
        '{"action": "purge_l1"}',
    ],
)
def test_an_answer_without_a_json_plan_is_an_error_with_no_action(answer: str) -> None:
    plan = parse_plan(answer, world(), PlanBounds())
    assert plan.error == 'no JSON plan (an object with "actions") in the model\'s answer'
    assert plan.verdicts == []


def test_the_json_object_is_found_inside_prose_and_code_fences() -> None:
    answer = 'Here is my plan:\n```json\n{"actions": [], "playbook": "calm"}\n```\nBye {'
    assert extract_plan(answer) == {"actions": [], "playbook": "calm"}


def test_actions_that_are_not_a_list_are_an_error() -> None:
    plan = parse_plan('{"actions": "purge_l1"}', world(), PlanBounds())
    assert plan.error == "'actions' must be a list"


def test_an_action_off_the_allow_list_is_rejected_with_the_reason() -> None:
    plan = parse_plan(plan_of({"action": "drop_database"}), world(), PlanBounds())
    [verdict] = plan.verdicts
    assert verdict.status == "rejected"
    assert "'drop_database' is not on the allow-list" in verdict.reason


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ({"action": "adjust_share", "hardware": "tpu", "share": 0.5}, "invalid hardware"),
        ({"action": "adjust_share", "hardware": "gpu", "share": "lots"}, "invalid share"),
        ({"action": "exclude_worker", "worker_id": "w1"}, "invalid reason"),
        ({"action": "purge_l1", "everything": True}, "invalid everything"),
        ("purge everything", "an action must be a JSON object"),
    ],
)
def test_a_malformed_action_is_rejected_with_the_reason(action: Any, reason: str) -> None:
    [verdict] = parse_plan(plan_of(action), world(), PlanBounds()).verdicts
    assert verdict.status == "rejected"
    assert reason in verdict.reason


@pytest.mark.parametrize(
    ("share", "reason"),
    [
        (0.99, "outside [0.05, 0.95]"),
        (0.9, "exceeds the step of 0.1"),
    ],
)
def test_a_share_out_of_bounds_is_rejected(share: float, reason: str) -> None:
    action = {"action": "adjust_share", "hardware": "gpu", "share": share}
    [verdict] = parse_plan(plan_of(action), world(), PlanBounds()).verdicts
    assert verdict.status == "rejected"
    assert reason in verdict.reason


def test_a_share_within_bounds_is_accepted() -> None:
    action = {"action": "adjust_share", "hardware": "gpu", "share": 0.7}
    [verdict] = parse_plan(plan_of(action), world(), PlanBounds()).verdicts
    assert verdict.status == "accepted"


def test_excluding_the_last_worker_of_a_model_is_rejected() -> None:
    action = {"action": "exclude_worker", "worker_id": "w3", "reason": "slow"}
    [verdict] = parse_plan(plan_of(action), world(), PlanBounds()).verdicts
    assert verdict.status == "rejected"
    assert "would leave 'g' with no worker" in verdict.reason


def test_exclusions_are_limited_per_run_and_checked_in_order() -> None:
    first = {"action": "exclude_worker", "worker_id": "w1", "reason": "errors"}
    second = {"action": "exclude_worker", "worker_id": "w2", "reason": "errors"}
    plan = parse_plan(plan_of(first, second), world(), PlanBounds(max_exclusions=2))
    assert [v.status for v in plan.verdicts] == ["accepted", "accepted"]
    plan = parse_plan(plan_of(first, second), world(), PlanBounds())
    assert [v.status for v in plan.verdicts] == ["accepted", "rejected"]
    assert "over the limit of 1 exclusion" in plan.verdicts[1].reason


def test_an_unknown_worker_is_rejected() -> None:
    action = {"action": "exclude_worker", "worker_id": "w9", "reason": "ghost"}
    [verdict] = parse_plan(plan_of(action), world(), PlanBounds()).verdicts
    assert verdict.reason == "no connected worker has id 'w9'"


def test_only_checker_or_red_exclusions_can_be_readmitted() -> None:
    readmit = {"action": "readmit_worker", "worker_id": "w1"}
    [verdict] = parse_plan(plan_of(readmit), world(w1="unknown_model"), PlanBounds()).verdicts
    assert verdict.status == "rejected"
    assert "unknown_model" in verdict.reason
    [verdict] = parse_plan(plan_of(readmit), world(w1="checker_failed"), PlanBounds()).verdicts
    assert verdict.status == "accepted"


def test_actions_past_the_limit_are_rejected() -> None:
    alerts = [{"action": "alert", "severity": "info", "message": f"n{i}"} for i in range(4)]
    plan = parse_plan(plan_of(*alerts), world(), PlanBounds(max_actions=2))
    assert [v.status for v in plan.verdicts] == ["accepted", "accepted", "rejected", "rejected"]


def test_the_playbook_notes_are_kept_and_cut_to_the_limit() -> None:
    plan = parse_plan(plan_of(playbook="x" * 500), world(), PlanBounds(playbook_max_chars=100))
    assert plan.playbook == "x" * 100
    assert parse_plan(plan_of(playbook=None), world(), PlanBounds()).playbook is None
