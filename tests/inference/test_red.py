"""RED runs on a real database with fixed plans: bad plans change nothing, good ones apply."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from inference.link import WorkerLink
from inference.pool_config import PoolConfig, load_pool_config
from inference.protocol import Frame, ModelInfo
from inference.red import (
    PlannerUnavailable,
    RedSettings,
    current_playbook,
    list_reports,
    playbook_versions,
    rollback_playbook,
    run_red,
    write_playbook,
)
from inference.registry import WorkerRegistry
from inference.settings import InferenceSettings

pytestmark = pytest.mark.anyio


async def _ignore(frame: Frame) -> None:
    return None


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
def registry() -> WorkerRegistry:
    """Two CPU workers serving model m."""
    workers = WorkerRegistry(InferenceSettings(), PoolConfig())
    for name in ("cpu-a", "cpu-b"):
        workers.workers[name] = WorkerLink(
            id=name,
            name=name,
            owner_id=None,
            models={"m": ModelInfo(id="m", context_size=512)},
            hardware="cpu",
            slots=1,
            send=_ignore,
        )
    return workers


class FixedPlanner:
    """Answers every plan request with the same text and keeps what it was asked."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.asked: list[list[dict[str, Any]]] = []

    async def __call__(self, messages: list[dict[str, Any]]) -> str:
        self.asked.append(messages)
        return self.answer


async def no_purge() -> int:
    raise AssertionError("this plan must not purge L1")


def plan(*actions: dict[str, Any], playbook: str = "notes") -> FixedPlanner:
    return FixedPlanner(json.dumps({"actions": list(actions), "playbook": playbook}))


async def stored_config(pool: asyncpg.Pool) -> PoolConfig:
    async with pool.acquire() as conn:
        return await load_pool_config(conn)


async def test_a_malformed_plan_changes_nothing_and_the_report_says_why(
    pool: asyncpg.Pool, registry: WorkerRegistry
) -> None:
    planner = FixedPlanner('Sure! {"actions": [{"action": "exclude_worker", "worker_id": ')
    run = await run_red(registry, pool, RedSettings(apply=True), planner, no_purge)
    assert run.outcome == "ok"
    assert (
        run.report["plan_error"] == 'no JSON plan (an object with "actions") in the model\'s answer'
    )
    assert run.report["actions"] == []
    assert await stored_config(pool) == PoolConfig()
    assert all(w.excluded is None for w in registry.workers.values())
    async with pool.acquire() as conn:
        [report] = await list_reports(conn)
    assert report["id"] == run.report_id
    assert report["answer"] == planner.answer


async def test_a_forbidden_plan_in_apply_mode_changes_nothing(
    pool: asyncpg.Pool, registry: WorkerRegistry
) -> None:
    planner = plan(
        {"action": "drop_database"},
        {"action": "adjust_share", "hardware": "cpu", "share": 0.99},
        {"action": "adjust_share", "hardware": "cpu", "share": 0.6},
        {"action": "exclude_worker", "worker_id": "w9", "reason": "ghost"},
        {"action": "readmit_worker", "worker_id": "cpu-a"},
    )
    run = await run_red(registry, pool, RedSettings(apply=True), planner, no_purge)
    reasons = [a["reason"] for a in run.report["actions"]]
    assert [a["status"] for a in run.report["actions"]] == ["rejected"] * 5
    assert "'drop_database' is not on the allow-list" in reasons[0]
    assert "outside [0.05, 0.95]" in reasons[1]
    assert "exceeds the step of 0.1" in reasons[2]
    assert reasons[3] == "no connected worker has id 'w9'"
    assert reasons[4] == "worker 'cpu-a' is not excluded"
    assert run.summary == "apply: 5 rejected"
    assert all(w.excluded is None for w in registry.workers.values())
    assert await stored_config(pool) == PoolConfig()


async def test_a_valid_plan_in_apply_mode_changes_the_pool_config_and_the_playbook(
    pool: asyncpg.Pool, registry: WorkerRegistry
) -> None:
    first = plan(
        {"action": "adjust_share", "hardware": "gpu", "share": 0.7},
        {"action": "alert", "severity": "warning", "message": "no GPU worker"},
        playbook="CPU-only pool; watch for a GPU.",
    )
    run = await run_red(registry, pool, RedSettings(apply=True), first, no_purge)
    assert [a["status"] for a in run.report["actions"]] == ["applied", "applied"]
    expected = {"gpu": 0.7, "cpu": pytest.approx(0.3)}
    assert (await stored_config(pool)).class_shares == expected
    assert registry.config.class_shares == expected
    async with pool.acquire() as conn:
        playbook = await current_playbook(conn)
    assert playbook is not None
    assert playbook.version == run.report["playbook_version"]
    assert playbook.text == "CPU-only pool; watch for a GPU."

    second = FixedPlanner("nothing to add")
    again = await run_red(registry, pool, RedSettings(apply=True), second, no_purge)
    assert "CPU-only pool; watch for a GPU." in second.asked[0][1]["content"]
    assert again.report["playbook_version"] == playbook.version + 1
    async with pool.acquire() as conn:
        newest = await current_playbook(conn)
    assert newest is not None and newest.text == playbook.text


async def test_a_dry_run_reports_what_it_would_do_and_changes_nothing(
    pool: asyncpg.Pool, registry: WorkerRegistry
) -> None:
    planner = plan(
        {"action": "adjust_share", "hardware": "gpu", "share": 0.55},
        {"action": "exclude_worker", "worker_id": "cpu-a", "reason": "errors"},
    )
    run = await run_red(registry, pool, RedSettings(), planner, no_purge)
    assert run.report["mode"] == "dry_run"
    assert [a["status"] for a in run.report["actions"]] == ["would_apply", "would_apply"]
    assert await stored_config(pool) == PoolConfig()
    assert registry.workers["cpu-a"].excluded is None
    assert run.summary == "dry run: 2 would_apply"


async def test_purge_l1_is_applied_through_the_given_effect(
    pool: asyncpg.Pool, registry: WorkerRegistry
) -> None:
    async def purge() -> int:
        return 7

    run = await run_red(
        registry, pool, RedSettings(apply=True), plan({"action": "purge_l1"}), purge
    )
    assert run.report["actions"][0]["reason"] == "purged 7 expired L1 message(s)"


async def test_without_a_model_the_run_is_skipped_and_still_reported(
    pool: asyncpg.Pool, registry: WorkerRegistry
) -> None:
    async def unavailable(messages: list[dict[str, Any]]) -> str:
        raise PlannerUnavailable("no worker serves 'red-model'")

    run = await run_red(registry, pool, RedSettings(), unavailable, no_purge)
    assert run.outcome == "skipped"
    assert run.summary == "no plan: no worker serves 'red-model'"
    assert {w["id"] for w in run.report["state"]["workers"]} == {"cpu-a", "cpu-b"}


async def test_the_state_names_no_user(pool: asyncpg.Pool, registry: WorkerRegistry) -> None:
    planner = FixedPlanner("{}")
    await run_red(registry, pool, RedSettings(), planner, no_purge)
    state = planner.asked[0][1]["content"]
    assert "user" not in state.split("Pool state:")[1].lower()


async def test_the_admin_can_set_and_roll_back_the_playbook(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        first = await write_playbook(conn, "one", "admin")
        await write_playbook(conn, "two", "red")
        back = await rollback_playbook(conn, first.version)
        assert back is not None
        assert (back.text, back.source) == ("one", "rollback")
        assert back.version == first.version + 2
        assert await rollback_playbook(conn, 999) is None
        versions = await playbook_versions(conn)
    assert [v.text for v in versions] == ["one", "two", "one"]
