"""Bearer-token resolution: token text → :class:`Principal`, cached, with batched last-used writes.

The hot path costs one dictionary lookup when the token is cached and one indexed query by prefix
when it is not. The stored SHA-256 is compared with :func:`hmac.compare_digest`. Last-used times are
collected in memory and written in one statement every ``last_used_flush_s`` (and at shutdown), so
no request waits on that bookkeeping.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import structlog

from hub.accounts import TokenRecord, find_token_by_prefix, hash_token, token_prefix, touch_tokens
from hub.config import AuthSettings
from hub.errors import AuthenticationError, PermissionDeniedError

log = structlog.get_logger()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token, its user (None for the pool admin token) and its scopes."""

    token_id: UUID
    token_prefix: str
    user_id: UUID | None
    user_name: str | None
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        """Raise 403 unless the token carries ``scope``."""
        if scope not in self.scopes:
            raise PermissionDeniedError(f"This token lacks the '{scope}' scope.")


@dataclass
class _Cached:
    principal: Principal
    expires_at: datetime | None
    cached_at: float


def _principal(record: TokenRecord) -> Principal:
    return Principal(
        token_id=record.id,
        token_prefix=record.prefix,
        user_id=record.user_id,
        user_name=record.user_name,
        scopes=frozenset(record.scopes),
    )


def parse_bearer(header: str | None) -> str:
    """Extract the token from an ``Authorization: Bearer`` header, or raise 401."""
    if not header:
        raise AuthenticationError(
            "No API key provided. Send 'Authorization: Bearer <token>'.", code="missing_api_key"
        )
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthenticationError(
            "Malformed Authorization header; expected 'Bearer <token>'.", code="invalid_api_key"
        )
    return value.strip()


class TokenResolver:
    """Resolves token text to a principal; owned by the app lifespan."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: AuthSettings,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._clock = clock
        self._now = now
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._last_used: dict[UUID, datetime] = {}

    async def resolve(self, token: str) -> Principal:
        """Return the principal of a live token or raise :class:`AuthenticationError`."""
        digest = hash_token(token)
        now = self._now()
        cached = self._cache.get(digest)
        if (
            cached is not None
            and self._clock() - cached.cached_at < self._settings.token_cache_ttl_s
        ):
            if cached.expires_at is not None and cached.expires_at <= now:
                self._cache.pop(digest, None)
                raise AuthenticationError("This API key has expired.", code="token_expired")
            self._last_used[cached.principal.token_id] = now
            return cached.principal
        record = await self._lookup(token, digest)
        self._check_live(record, now)
        principal = _principal(record)
        self._remember(digest, principal, record.expires_at)
        self._last_used[principal.token_id] = now
        return principal

    async def _lookup(self, token: str, digest: bytes) -> TokenRecord:
        prefix = token_prefix(token)
        if prefix is None:
            raise AuthenticationError(
                "Malformed API key; iamine keys look like 'iam_<prefix>_<secret>'.",
                code="invalid_api_key",
            )
        async with self._pool.acquire() as conn:
            record = await find_token_by_prefix(conn, prefix)
        if record is None or not hmac.compare_digest(record.hash, digest):
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        return record

    @staticmethod
    def _check_live(record: TokenRecord, now: datetime) -> None:
        if record.revoked_at is not None:
            raise AuthenticationError("This API key has been revoked.", code="token_revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthenticationError("This API key has expired.", code="token_expired")
        if record.user_disabled:
            raise AuthenticationError("This API key's user is disabled.", code="user_disabled")

    def _remember(self, digest: bytes, principal: Principal, expires_at: datetime | None) -> None:
        if self._settings.token_cache_ttl_s <= 0 or self._settings.token_cache_size <= 0:
            return
        self._cache[digest] = _Cached(principal, expires_at, self._clock())
        self._cache.move_to_end(digest)
        while len(self._cache) > self._settings.token_cache_size:
            self._cache.popitem(last=False)

    def forget(self, token_id: UUID) -> None:
        """Drop a token from the cache at once (after a revoke in this process)."""
        for digest in [d for d, c in self._cache.items() if c.principal.token_id == token_id]:
            del self._cache[digest]

    def forget_user(self, user_id: UUID) -> None:
        """Drop every cached token of a user (after disabling them)."""
        for digest in [d for d, c in self._cache.items() if c.principal.user_id == user_id]:
            del self._cache[digest]

    async def flush_last_used(self) -> None:
        """Write the collected last-used times in one statement."""
        if not self._last_used:
            return
        batch, self._last_used = self._last_used, {}
        try:
            async with self._pool.acquire() as conn:
                await touch_tokens(conn, batch)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("token_last_used_flush_failed", error=str(exc), tokens=len(batch))
            for token_id, used in batch.items():
                self._last_used.setdefault(token_id, used)

    async def run_flusher(self) -> None:
        """Flush last-used times forever (cancelled by the lifespan, which flushes once more)."""
        while True:
            await asyncio.sleep(self._settings.last_used_flush_s)
            await self.flush_last_used()
