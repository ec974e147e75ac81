"""Scheduled jobs on a live hub with a real worker: the jobs API, the checker, RED, the CLI."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from hub.cli import app
from inference.checker import CheckerSettings
from inference.red import RedSettings
from tests.hub.conftest import BUNDLED_MODEL, LiveHub
from tests.hub.test_errors import assert_openai_error

pytestmark = pytest.mark.usefixtures("real_worker")


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """Short benchmark and plan: the tiny model's numbers and plans are all the tests need."""
    return {
        "checker": CheckerSettings(max_tokens=12),
        "red": RedSettings(max_tokens=40, timeout_s=120),
    }


def admin(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.admin_token}"}


def get(hub: LiveHub, path: str) -> Any:
    response = httpx.get(f"{hub.url}{path}", headers=admin(hub), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def run(hub: LiveHub, job: str) -> dict[str, Any]:
    response = httpx.post(f"{hub.url}/admin/api/jobs/{job}/run", headers=admin(hub), timeout=300)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_jobs_api_lists_every_job_on_its_schedule(live_hub: LiveHub) -> None:
    jobs = {j["name"]: j for j in get(live_hub, "/admin/api/jobs")["data"]}
    assert list(jobs) == [
        "l1_purge",
        "checker",
        "red",
        "federation_sync",
        "settlement",
        "fact_indexes",
    ]
    assert [jobs[n]["interval_s"] for n in jobs] == [3600, 900, 10800, 0, 3600, 3600]
    timed = [j for name, j in jobs.items() if name != "federation_sync"]
    assert all(j["scheduled"] and j["next_run_at"] and not j["running"] for j in timed)
    assert not jobs["federation_sync"]["scheduled"]  # federation is off in this hub
    assert [jobs[n]["needs_hub"] for n in jobs] == [False, True, True, True, True, False]


def test_the_checker_records_numbers_and_the_router_uses_them(live_hub: LiveHub) -> None:
    checked = run(live_hub, "checker")
    assert checked["outcome"] == "ok", checked
    assert checked["summary"].startswith("checked 1:")
    [result] = [
        r for r in get(live_hub, "/admin/api/benchmarks")["data"] if r["worker_name"] == "real"
    ]
    assert result["model"] == BUNDLED_MODEL
    assert result["generation_tps"] > 0 and result["prompt_tps"] > 0 and result["ttft_ms"] > 0
    assert result["known_answer_ok"] is not None and "known_answer" in result["raw"]
    assert result["tools_ok"] is not None, "the bundled model announces tool support"
    [worker] = get(live_hub, "/admin/api/workers")["data"]
    assert worker["tokens_per_s"] is not None and worker["tokens_per_s"] > 0
    assert worker["tools_ok"] is result["tools_ok"]
    last = {j["name"]: j["last_run"] for j in get(live_hub, "/admin/api/jobs")["data"]}
    assert last["checker"]["id"] == checked["id"]
    assert last["checker"]["detail"]["checked"][0]["worker_name"] == "real"


def test_red_plans_with_the_pool_model_in_dry_run_and_changes_nothing(live_hub: LiveHub) -> None:
    config_before = get(live_hub, "/admin/api/pool-config")
    ran = run(live_hub, "red")
    # The tiny model may write a poor plan, or (on a loaded machine) none in time: either way
    # the run is reported, and nothing changes.
    assert ran["outcome"] in {"ok", "error"}, ran
    [report] = get(live_hub, "/admin/api/red/reports")["data"]
    assert report["id"] == ran["detail"]["report_id"]
    assert report["mode"] == "dry_run"
    assert report["model"] == BUNDLED_MODEL
    assert report["state"]["workers"][0]["name"] == "real"
    for action in report["actions"]:
        assert action["status"] in {"rejected", "would_apply", "applied"}, action
        assert action["status"] != "applied" or action["proposed"]["action"] == "alert"
        assert action["reason"]
    assert report["summary"] == ran["summary"]
    assert ran["outcome"] == "ok" or report["plan_error"].startswith("the model ")
    assert get(live_hub, "/admin/api/pool-config") == config_before
    assert all(w["excluded"] is None for w in get(live_hub, "/admin/api/workers")["data"])
    playbook = get(live_hub, "/admin/api/red/playbook")
    assert playbook["current"]["version"] == report["playbook_version"]
    assert playbook["current"]["source"] == "red"


def test_the_admin_rolls_the_playbook_back(live_hub: LiveHub) -> None:
    url = f"{live_hub.url}/admin/api/red/playbook"
    first = httpx.post(url, json={"text": "watch the CPU share"}, headers=admin(live_hub)).json()
    httpx.post(url, json={"text": "something else"}, headers=admin(live_hub))
    back = httpx.post(url, json={"rollback_to": first["version"]}, headers=admin(live_hub))
    assert back.status_code == 200
    assert back.json()["text"] == "watch the CPU share"
    assert back.json()["source"] == "rollback"
    assert get(live_hub, "/admin/api/red/playbook")["current"]["version"] == back.json()["version"]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"rollback_to": 99999}, 404, "not_found", "rollback_to"),
        ({"rollback_to": 1, "text": "x"}, 400, "invalid_value", None),
        ({}, 400, "invalid_value", None),
        ({"text": 5}, 400, "invalid_value", "text"),
        ({"version": 1}, 400, "invalid_value", "version"),
    ],
)
def test_bad_playbook_changes_get_the_error_shape(
    live_hub: LiveHub, body: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    response = httpx.post(
        f"{live_hub.url}/admin/api/red/playbook", json=body, headers=admin(live_hub)
    )
    assert response.status_code == status
    assert_openai_error(response.json(), code, param)


def test_fact_indexes_runs_on_demand_and_says_what_it_changed(live_hub: LiveHub) -> None:
    body = run(live_hub, "fact_indexes")
    assert body["outcome"] == "ok", body
    assert body["summary"] == "0 index(es) created, 0 dropped"  # no user has 10,000 facts here
    assert body["detail"] == {"created": [], "dropped": []}


def test_an_unknown_job_is_404_and_users_cannot_run_jobs(live_hub: LiveHub) -> None:
    response = httpx.post(f"{live_hub.url}/admin/api/jobs/nope/run", headers=admin(live_hub))
    assert response.status_code == 404
    assert_openai_error(response.json(), "not_found", "name")
    user = {"Authorization": f"Bearer {live_hub.user_token}"}
    response = httpx.post(f"{live_hub.url}/admin/api/jobs/l1_purge/run", headers=user)
    assert response.status_code == 403


def test_iamine_jobs_run_asks_the_running_hub_with_the_data_dirs_admin_token(
    live_hub: LiveHub,
) -> None:
    env = {"IAMINE_DATA_DIR": str(live_hub.settings.data_dir), "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["jobs", "run", "l1_purge", "--hub", live_hub.url], env=env)
    assert result.exit_code == 0, result.output
    assert "l1_purge: ok - purged 0 expired L1 message(s)" in result.output
    runs = get(live_hub, "/admin/api/jobs")["runs"]
    assert runs[0]["job"] == "l1_purge" and runs[0]["trigger"] == "api"


def test_iamine_jobs_run_says_when_no_hub_answers(live_hub: LiveHub) -> None:
    env = {"IAMINE_DATA_DIR": str(live_hub.settings.data_dir), "COLUMNS": "200"}
    args = ["jobs", "run", "checker", "--hub", "http://127.0.0.1:9"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 1
    assert "Cannot reach the hub" in result.output
