"""MCP fixtures: the live hub of tests/hub (with its fixtures), a second user, MCP clients."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from hub import accounts
from tests.hub.conftest import LiveHub, live_hub, real_worker  # noqa: F401 (fixture re-export)


async def _second_user(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        user = await accounts.create_user(conn, "bob")
        issued = await accounts.create_token(conn, user_id=user.id, scopes=("user",))
        return issued.token
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def bob_token(live_hub: LiveHub) -> str:  # noqa: F811
    """A user token of a second user of the live hub."""
    return asyncio.run(_second_user(live_hub.database_url))
