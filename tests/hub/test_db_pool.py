"""The hub's connection pool: a connection comes back clean without asyncpg's reset query."""

from __future__ import annotations

import pytest

from hub.config import Settings
from hub.db import create_pool

pytestmark = pytest.mark.anyio


async def test_a_connection_released_inside_a_transaction_comes_back_rolled_back(
    database_url: str, settings: Settings
) -> None:
    one = settings.model_copy(
        update={
            "database": settings.database.model_copy(
                update={"pool_min_size": 1, "pool_max_size": 1}
            )
        }
    )
    pool = await create_pool(database_url, one)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE pool_probe (n integer)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO pool_probe VALUES (1)")
            assert conn.is_in_transaction()
        async with pool.acquire() as conn:  # the same connection: the pool holds one
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM pool_probe") == 0
            async with conn.transaction():
                await conn.execute("SET LOCAL statement_timeout = 1234")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") != "1234ms"
            assert await conn.fetchval("SELECT '[1,2,3]'::vector") is not None  # codec kept
    finally:
        await pool.close()
