"""Fuzz every HTTP route of a live hub with schemathesis: as a user, as the admin, with no token.

Each operation of the app's OpenAPI schema gets valid and schema-violating requests (schemathesis's
examples and fuzzing phases), once per caller. Checks: never a 5xx, a schema-violating request is
refused with a 4xx, statuses and bodies are the ones the schema declares; afterwards the hub is
still ready. No worker is connected, so a route that would run a model must answer at once: a
404 for a model nobody serves, or a degraded answer after the short queue wait this module gives
its hub. Budget: see ``tests/fuzzing.py``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from hub.app import create_app
from hub.config import Settings
from inference.settings import InferenceSettings
from tests.fuzzing import CI_SEED, examples, is_long_run
from tests.hub.conftest import LiveHub

CALLERS = ("user", "admin", "anonymous")
POOL_CONFIG = "/admin/api/pool-config"
# Seconds a chat for a model with no worker waits in the queue before its degraded answer.
FUZZ_QUEUE_WAIT_S = 0.2
# A bound on every request: a hang fails its case instead of the whole run.
REQUEST_TIMEOUT_S = 60


def openapi_document() -> dict[str, Any]:
    """The hub's OpenAPI schema, from an app that is built but never started."""
    settings = Settings(
        data_dir=Path(tempfile.gettempdir()) / "iamine-openapi-unused",
        inference=InferenceSettings(local_worker=False),
    )
    document: dict[str, Any] = create_app(settings).openapi()
    return document


def fuzz_config() -> schemathesis.Config:
    """Schemathesis's settings: examples and fuzzing phases, the checks this suite holds to."""
    config: dict[str, Any] = {
        "generation": {"mode": "all", "max-examples": examples(8)},
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
        "checks": {
            "not_a_server_error": {"enabled": True},
            "negative_data_rejection": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
            # Valid data may name a model, user or id that does not exist: 400/404 are answers.
            "positive_data_acceptance": {"enabled": False},
        },
    }
    if not is_long_run():
        config["seed"] = CI_SEED
    return schemathesis.Config.from_dict(config)


schema = schemathesis.openapi.from_dict(openapi_document(), config=fuzz_config())

# Repeatable query parameters (`?tags=a&tags=b`): on the wire every value is an array of strings,
# so a "schema-violating" non-array value becomes a valid one once serialized, and schemathesis
# (4.x, with `anyOf` array-or-null) reports its acceptance as a failure. Such draws are dropped.
QUERY_ARRAYS = ("tags", "namespace")


@schema.hook
def filter_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> bool:
    """Keep a query only if its repeatable parameters are arrays (or absent)."""
    return not query or all(
        isinstance(query.get(name), list | None) for name in QUERY_ARRAYS if name in query
    )


@dataclass(frozen=True)
class FuzzHub:
    """The live hub under fuzz, and the routing policy it is given back after a fuzzed one."""

    hub: LiveHub
    policy: dict[str, Any]

    def restore_policy(self) -> None:
        """Put the fuzz's routing policy back in force."""
        admin = {"Authorization": f"Bearer {self.hub.admin_token}"}
        response = httpx.put(
            f"{self.hub.url}{POOL_CONFIG}", headers=admin, json=self.policy, timeout=10
        )
        assert response.status_code == 200, response.text

    def headers(self, caller: str) -> dict[str, str] | None:
        """The caller's ``Authorization`` header (none for the anonymous caller)."""
        token = {"user": self.hub.user_token, "admin": self.hub.admin_token}.get(caller)
        return {"Authorization": f"Bearer {token}"} if token else None


@pytest.fixture(scope="module")
def fuzz_hub(live_hub: LiveHub) -> FuzzHub:
    """The live hub with a short queue wait for models that have no worker."""
    admin = {"Authorization": f"Bearer {live_hub.admin_token}"}
    policy = httpx.get(f"{live_hub.url}{POOL_CONFIG}", headers=admin, timeout=10).json()
    fuzz_hub = FuzzHub(live_hub, {**policy, "queue_wait_s": FUZZ_QUEUE_WAIT_S})
    fuzz_hub.restore_policy()
    # Load the embedding model now, not inside the first fuzzed note's request.
    note = httpx.post(
        f"{live_hub.url}/v1/memory/notes",
        headers=fuzz_hub.headers("user"),
        json={"body": "warm up"},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert note.status_code == 201, note.text
    return fuzz_hub


@pytest.mark.parametrize("caller", CALLERS)
@schema.parametrize()
def test_no_route_answers_5xx_or_accepts_a_schema_violating_request(
    case: schemathesis.Case[Any], caller: str, fuzz_hub: FuzzHub
) -> None:
    try:
        case.call_and_validate(
            base_url=fuzz_hub.hub.url, headers=fuzz_hub.headers(caller), timeout=REQUEST_TIMEOUT_S
        )
    finally:
        if case.method.upper() == "PUT" and case.path == POOL_CONFIG and caller == "admin":
            # A fuzzed policy may set a long queue wait: later chats would wait it out.
            fuzz_hub.restore_policy()


def test_a_playbook_rollback_past_bigint_is_a_400_not_a_500(fuzz_hub: FuzzHub) -> None:
    response = httpx.post(
        f"{fuzz_hub.hub.url}/admin/api/red/playbook",
        headers=fuzz_hub.headers("admin"),
        json={"rollback_to": 2**80},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "rollback_to"


def test_the_hub_is_ready_and_holds_no_job_after_the_fuzz(fuzz_hub: FuzzHub) -> None:
    hub = fuzz_hub.hub
    ready = httpx.get(f"{hub.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    queue = httpx.get(f"{hub.url}/admin/api/queue", headers=fuzz_hub.headers("admin"), timeout=10)
    assert queue.json()["depth"] == 0
