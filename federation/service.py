"""This pool in the federation: authenticate peers' requests, answer them signed, peer, invite.

One :class:`Federation` per running hub (built by the lifespan when federation is on); the HTTP
routes stay thin over it. Every ``/v1/federation/*`` request goes through
:meth:`Federation.authenticate`, which refuses, in this order: no signature, a ``created`` time
out of bounds, an unknown key (except a hello, which carries its key), a digest that does not
match the body, a bad signature, another destination, and a nonce already seen. A refused
request changes nothing: the nonce is recorded in the same transaction as whatever the request
does.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import orjson
import structlog

from federation import invites, nonces, peers
from federation.capabilities import CapabilityBook
from federation.client import Clock, PeerClient, utc_now
from federation.errors import (
    FederationDisabled,
    InvalidFederationInput,
    InviteRefused,
    PeerFailed,
    SignatureRejected,
    WrongDestination,
)
from federation.identity import (
    PoolIdentity,
    decode_public_key,
    load_or_create_identity,
    parse_pool_id,
    pool_id_of,
)
from federation.settings import FederationSettings, normalise_origin
from federation.signatures import (
    SignedRequest,
    SignedResponse,
    check_age,
    sign_response,
    signature_params,
    verify_request,
)

log = structlog.get_logger()


@dataclass(frozen=True)
class Inbound:
    """A federation request as it reached this hub: exactly the bytes the signature covers."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Hello:
    """A joining pool's hello: who it is, where it lives, its invite, and whom it meant to join."""

    pool_id: str
    public_key: str
    url: str
    invite: str
    to: str


class Federation:
    """This pool's federation role: its identity, its peers' requests and its calls to them."""

    def __init__(
        self,
        settings: FederationSettings,
        identity: PoolIdentity,
        pool: asyncpg.Pool,
        http: httpx.AsyncClient,
        *,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        if settings.public_url is None:
            raise FederationDisabled("Federation needs IAMINE_FEDERATION__PUBLIC_URL.")
        self.settings = settings
        self.identity = identity
        self.public_url: str = settings.public_url
        self._pool = pool
        self._clock = clock
        self.client = PeerClient(identity, settings, http, pool.acquire, clock=clock, rng=rng)
        self.capabilities = CapabilityBook(timedelta(seconds=settings.capability_max_age_s))

    def describe(self) -> dict[str, Any]:
        """This pool's public identity: what an admin hands to another pool's admin."""
        return describe(self.identity, self.public_url)

    # -- inbound -------------------------------------------------------------------------------

    async def authenticate(
        self, conn: asyncpg.Connection, inbound: Inbound, *, hello_key: bytes | None = None
    ) -> tuple[str, SignedRequest]:
        """The sender's pool id and the verified request, or a refusal (nothing recorded).

        ``hello_key`` is the key a hello carries: a hello is the one request whose sender need
        not be a peer yet (it must still sign with that key, and hold a valid invite).
        """
        params = signature_params(inbound.headers)
        check_age(
            params.created,
            self._clock(),
            max_age_s=self.settings.max_age_s,
            skew_s=self.settings.clock_skew_s,
        )
        if hello_key is not None:
            if pool_id_of(hello_key) != params.keyid:
                raise SignatureRejected("The hello's keyid is not the fingerprint of its key.")
            public_key = hello_key
        else:
            peer = await peers.find_peer(conn, params.keyid)
            if peer is None:
                raise SignatureRejected(
                    f"{params.keyid[:64]!r} is not a peer of this pool.", code="unknown_peer"
                )
            public_key = peer.public_key
        host = inbound.headers.get("host", "")
        scheme = self.public_url.split("://", 1)[0]
        request = SignedRequest(
            inbound.method, f"{scheme}://{host}{inbound.target}", inbound.headers
        )
        authority = verify_request(
            request,
            inbound.body,
            params.keyid,
            public_key,
            max_age_s=self.settings.max_age_s,
            skew_s=self.settings.clock_skew_s,
        )
        if authority != self.public_url.split("://", 1)[1]:
            raise WrongDestination(
                f"This request was signed for {authority}, not for this pool ({self.public_url})."
            )
        expires = nonces.nonce_expiry(
            params.created, max_age_s=self.settings.max_age_s, skew_s=self.settings.clock_skew_s
        )
        await nonces.record_nonce(conn, params.keyid, params.nonce, expires)
        if hello_key is None:
            await peers.mark_seen(conn, params.keyid, self._clock())
        return params.keyid, request

    def sign_answer(self, request: SignedRequest, status: int, body: bytes) -> dict[str, str]:
        """Headers that sign an answer to ``request`` (content type included)."""
        response = SignedResponse(status, {"content-type": "application/json"}, request)
        sign_response(self.identity, response, body, self._clock())
        return response.headers

    async def receive_hello(
        self, inbound: Inbound, hello: Hello
    ) -> tuple[dict[str, Any], SignedRequest]:
        """Admit the pool saying hello if its invite is good; return this pool's answer."""
        key = decode_public_key(hello.public_key)
        url = _origin(hello.url)
        invite = invites.parse_invite_code(hello.invite)
        async with self._pool.acquire() as conn, conn.transaction():
            joiner, request = await self.authenticate(conn, inbound, hello_key=key)
            if hello.pool_id != joiner:
                raise InvalidFederationInput("pool_id is not the signer's.", param="pool_id")
            if hello.to.strip().lower() != self.identity.pool_id:
                raise InviteRefused(
                    f"This pool is {self.identity.pool_id}, not {hello.to[:64]!r}: check the "
                    "fingerprint you were given.",
                    code="fingerprint_mismatch",
                )
            now = self._clock()
            used = await invites.redeem_invite(
                conn, invite, pool_id=self.identity.pool_id, joiner=joiner, now=now
            )
            peer = await peers.admit_peer(
                conn,
                pool_id=joiner,
                public_key=key,
                url=url,
                admitted_by=f"invite {used.id}",
                now=now,
            )
        log.info("federation_peer_admitted", peer=peer.pool_id, url=peer.url, invite=used.id)
        return {**self.describe(), "admitted_at": peer.admitted_at.isoformat()}, request

    async def receive_ping(self, inbound: Inbound) -> tuple[dict[str, Any], SignedRequest]:
        """Answer a peer's ping: this pool's id and clock, and whom it sees calling."""
        async with self._pool.acquire() as conn, conn.transaction():
            caller, request = await self.authenticate(conn, inbound)
        answer = {
            "pool_id": self.identity.pool_id,
            "peer": caller,
            "time": self._clock().isoformat(),
        }
        return answer, request

    # -- outbound and admin --------------------------------------------------------------------

    async def invite(
        self, ttl: timedelta | None = None, for_pool_id: str | None = None
    ) -> dict[str, Any]:
        """Mint a one-time invite; the answer has what the other admin needs (shown once)."""
        async with self._pool.acquire() as conn:
            return await mint_invite(
                conn,
                self.identity,
                self.settings,
                now=self._clock(),
                ttl=ttl,
                for_pool_id=for_pool_id,
            )

    async def join(self, url: str, fingerprint: str, invite: str) -> peers.Peer:
        """Peer with the pool at ``url`` using its admin's invite and fingerprint."""
        intro = await introduce(self.client, self.public_url, url, fingerprint, invite)
        async with self._pool.acquire() as conn:
            return await admit_introduced(conn, intro, self._clock())

    async def ping(self, pool_id: str) -> dict[str, Any]:
        """Call a peer's ping now (whatever its backoff) and return its signed answer."""
        async with self._pool.acquire() as conn:
            peer = await peers.get_peer(conn, parse_pool_id(pool_id))
        return await self.client.call(peer, "GET", "/v1/federation/ping")

    async def run(self) -> None:
        """Purge expired nonces every ``nonce_purge_interval_s`` until cancelled."""
        while True:
            try:
                async with self._pool.acquire() as conn:
                    await nonces.purge_nonces(conn, self._clock())
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("federation_nonce_purge_failed", error=str(exc))
            await anyio.sleep(self.settings.nonce_purge_interval_s)


@asynccontextmanager
async def open_federation(
    settings: FederationSettings, data_dir: Path, pool: asyncpg.Pool
) -> AsyncIterator[Federation]:
    """This hub's :class:`Federation`: its key (made on first start) and its own HTTP client."""
    identity = load_or_create_identity(data_dir)
    timeout = httpx.Timeout(settings.request_timeout_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
        log.info("federation_on", pool_id=identity.pool_id, url=settings.public_url)
        yield Federation(settings, identity, pool, http)


def describe(identity: PoolIdentity, public_url: str | None) -> dict[str, Any]:
    """A pool's public identity as shown to admins and sent in hellos."""
    return {
        "pool_id": identity.pool_id,
        "public_key": identity.public_key_text,
        "url": public_url,
    }


def _origin(url: str) -> str:
    try:
        return normalise_origin(url)
    except ValueError as exc:
        raise InvalidFederationInput(str(exc), param="url") from None


async def mint_invite(
    conn: asyncpg.Connection,
    identity: PoolIdentity,
    settings: FederationSettings,
    *,
    now: datetime,
    ttl: timedelta | None = None,
    for_pool_id: str | None = None,
) -> dict[str, Any]:
    """Mint an invite; return the code (shown once) with this pool's id and URL."""
    if not settings.active:
        raise FederationDisabled(
            "Federation is off: set IAMINE_FEDERATION__ENABLED=true and "
            "IAMINE_FEDERATION__PUBLIC_URL first."
        )
    bound = parse_pool_id(for_pool_id) if for_pool_id is not None else None
    code, invite = await invites.create_invite(
        conn,
        pool_id=identity.pool_id,
        now=now,
        ttl=ttl if ttl is not None else timedelta(seconds=settings.invite_ttl_s),
        for_pool_id=bound,
    )
    return {**describe(identity, settings.public_url), "invite": code, **_invite_fields(invite)}


def _invite_fields(invite: invites.Invite) -> dict[str, Any]:
    return {
        "invite_id": invite.id,
        "expires_at": invite.expires_at.isoformat(),
        "for_pool_id": invite.for_pool_id,
    }


@dataclass(frozen=True)
class Introduction:
    """A pool that answered our hello, signed with the key the admin's fingerprint names."""

    pool_id: str
    public_key: bytes
    url: str


async def introduce(
    client: PeerClient, own_url: str, url: str, fingerprint: str, invite: str
) -> Introduction:
    """Say hello to the pool at ``url`` with an invite; check its answer against ``fingerprint``.

    The answer must carry a key whose fingerprint is the one the admin typed, and be signed by
    that key; otherwise :class:`InviteRefused` (``fingerprint_mismatch``) or
    :class:`~federation.errors.PeerFailed`, and nothing is recorded here.
    """
    target = _origin(url)
    expected = parse_pool_id(fingerprint)
    code = invites.parse_invite_code(invite)
    identity = client.identity
    if expected == identity.pool_id or target == own_url:
        raise InvalidFederationInput("A pool cannot peer with itself.", param="url")
    hello = {**describe(identity, own_url), "invite": code, "to": expected}
    exchange = await client.exchange(target, "POST", "/v1/federation/hello", hello)
    if not 200 <= exchange.status < 300:
        raise client.refusal(exchange)
    answer_key = _answer_key(exchange.body)
    if answer_key is None:
        raise PeerFailed(
            f"{target} answered the hello without a public key.",
            code="peer_answer_invalid",
            status=exchange.status,
        )
    if pool_id_of(answer_key) != expected:
        raise InviteRefused(
            f"{target} answered as {pool_id_of(answer_key)}, not {expected}: not the pool you "
            "were told about. Nothing was recorded.",
            code="fingerprint_mismatch",
        )
    client.answer(exchange, expected, answer_key)
    return Introduction(expected, answer_key, target)


def _answer_key(body: bytes) -> bytes | None:
    try:
        data = orjson.loads(body)
        return decode_public_key(data["public_key"])
    except (orjson.JSONDecodeError, KeyError, TypeError, InvalidFederationInput):
        return None


async def admit_introduced(
    conn: asyncpg.Connection, intro: Introduction, now: datetime
) -> peers.Peer:
    """Record a pool that answered our hello as an admitted peer."""
    peer = await peers.admit_peer(
        conn,
        pool_id=intro.pool_id,
        public_key=intro.public_key,
        url=intro.url,
        admitted_by="admin",
        now=now,
    )
    log.info("federation_peer_added", peer=peer.pool_id, url=peer.url)
    return peer
