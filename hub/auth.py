"""Bearer-token resolution: token text → :class:`Principal`, cached, with batched last-used writes.

The hot path costs one dictionary lookup when the token is cached and one indexed query by prefix
when it is not. The stored SHA-256 is compared with :func:`hmac.compare_digest`. Last-used times are
collected in memory and written in one statement every ``last_used_flush_s`` (and at shutdown), so
no request waits on that bookkeeping.

A cached token must not outlive its revocation, nor may an open worker link or MCP stream: the
resolver's sweep re-reads every cached or leased token every ``revocation_check_s`` and drops the
dead ones, ending their leases (see :mod:`hub.revocation`).
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

from hub.accounts import (
    TokenRecord,
    dead_tokens,
    find_token_by_prefix,
    hash_token,
    token_prefix,
    touch_tokens,
)
from hub.config import AuthSettings
from hub.errors import AuthenticationError, PermissionDeniedError
from hub.revocation import Leases

log = structlog.get_logger()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token, its user (None for the pool admin token) and its scopes."""

    token_id: UUID
    token_prefix: str
    user_id: UUID | None
    user_name: str | None
    scopes: frozenset[str]
    worker_id: UUID | None = None

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
        worker_id=record.worker_id,
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
        self.leases = Leases()
        # Told of each token or user this process drops on purpose, so that the other hub
        # replicas drop them too (hub/pool_events.py); None with a single process.
        self.on_token_dead: Callable[[UUID, str], None] | None = None
        self.on_user_disabled: Callable[[UUID], None] | None = None

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

    def forget(
        self, token_id: UUID, reason: str = "token_revoked", *, announce: bool = True
    ) -> None:
        """Drop a token at once (after a revoke in this process): its cache entry and its leases.

        ``announce``: tell the other replicas too (false when the news came from one of them).
        """
        self._forget({token_id: reason})
        if announce and self.on_token_dead is not None:
            self.on_token_dead(token_id, reason)

    def forget_user(self, user_id: UUID, *, announce: bool = True) -> None:
        """Drop every token of a user at once (after disabling them), cached or leased."""
        for digest in [d for d, c in self._cache.items() if c.principal.user_id == user_id]:
            del self._cache[digest]
        ended = self.leases.end_user(user_id)
        log.info("user_tokens_dropped", user=str(user_id), leases_ended=ended)
        if announce and self.on_user_disabled is not None:
            self.on_user_disabled(user_id)

    def _forget(self, dead: dict[UUID, str]) -> None:
        for digest in [d for d, c in self._cache.items() if c.principal.token_id in dead]:
            del self._cache[digest]
        ended = self.leases.end_tokens(dead)
        log.info("tokens_dropped", tokens={str(t): r for t, r in dead.items()}, leases_ended=ended)

    async def sweep(self) -> None:
        """Re-read every cached or leased token and drop the ones that died meanwhile.

        This is how a revocation made by another process (the CLI, another hub), a parent's
        revocation and an expiry reach this process's cache and open links.
        """
        self._evict_stale()
        ids = {c.principal.token_id for c in self._cache.values()} | self.leases.token_ids()
        if not ids:
            return
        try:
            async with self._pool.acquire() as conn:
                dead = await dead_tokens(conn, ids)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("token_sweep_failed", error=str(exc), tokens=len(ids))
            return
        if dead:
            self._forget(dead)

    def _evict_stale(self) -> None:
        """Drop entries past the cache TTL: they would be looked up again anyway."""
        oldest = self._clock() - self._settings.token_cache_ttl_s
        for digest in [d for d, c in self._cache.items() if c.cached_at <= oldest]:
            del self._cache[digest]

    async def run_sweeper(self) -> None:
        """Sweep every ``revocation_check_s`` forever (cancelled by the lifespan)."""
        while True:
            await asyncio.sleep(self._settings.revocation_check_s)
            await self.sweep()

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
