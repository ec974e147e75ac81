"""Liveness, readiness, metrics and request ids."""

from __future__ import annotations

import asyncio

import asyncpg
from fastapi.testclient import TestClient


def test_healthz_answers_ok(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_green_on_a_migrated_database(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "migrations": "current"}


def test_readyz_is_503_when_a_migration_file_changed_under_a_running_hub(
    client: TestClient, database_url: str
) -> None:
    async def tamper() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
        finally:
            await conn.close()

    asyncio.run(tamper())
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["migrations"] == "pending_or_changed"


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/healthz").headers["x-request-id"]
    assert first and second and first != second


def test_a_client_request_id_is_echoed_and_an_unsafe_one_replaced(client: TestClient) -> None:
    echoed = client.get("/healthz", headers={"X-Request-Id": "trace-42"})
    assert echoed.headers["x-request-id"] == "trace-42"
    replaced = client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"


def test_metrics_count_requests_by_route_and_auth_failures(client: TestClient) -> None:
    client.get("/healthz")
    client.get("/v1/tokens", headers={"Authorization": "Bearer nope"})
    text = client.get("/metrics").text
    assert 'iamine_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'iamine_auth_failures_total{code="invalid_api_key"} 1.0' in text
    assert "iamine_http_request_duration_seconds_bucket" in text


def test_metrics_export_lost_and_dropped_background_writes(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert "# TYPE iamine_bookkeeping_lost_total counter" in text
    assert "# TYPE iamine_bookkeeping_dropped_total counter" in text
    assert "iamine_bookkeeping_pending 0.0" in text
    assert "iamine_bookkeeping_capacity 10000.0" in text


def test_readyz_reports_the_local_worker_without_making_the_hub_unready(
    client: TestClient,
) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["local_worker"]["state"] == "disabled"
