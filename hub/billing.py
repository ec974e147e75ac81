"""The chat path's $IAMINE bookkeeping: a hold beside placement, a post or a void at the end.

Every user chat is a two-phase transfer on the ledger (``economy/``, docs/economy.md), keyed on
the chat's job id, so it happens exactly once whatever the failover, retries or restarts:

- :meth:`Billing.open`, before the job is placed, arms the **hold** of the expected cost (the
  user's trial grant first, once) and returns at once: no database round trip before the job
  starts. The hold is queued ``hold_delay_s`` later, or at once when that is 0 or the queue is
  full; a background writer applies it.
- :meth:`Billing.bill` relays the job's events and, when they end, queues the **post** of the
  usage the hub counted itself (``done`` seen) or the **void** (failure, degraded answer, client
  gone). The post and the void wait for their hold; a chat that ended before its hold was queued
  (most chats) is held and posted (or voided) in one transaction (:meth:`Ledger.hold_then`): the
  same transfers, one commit instead of two, and no ledger work while the answer streams.
  These self-contained operations are also **committed in groups**: one writer gathers what
  arrives within ``group_window_s`` (at most ``group_size``) and applies it in one transaction
  (:meth:`economy.ledger.Ledger.group_transaction`); a group that fails is applied again job by job.

The usage posted is bounded by what the hub saw: completion tokens are at most the chunks it
relayed (a chunk is at least one token), prompt tokens at most the UTF-8 bytes of the prompt it
sent (a token is at least one byte). The earner is the worker that finished the job.

Nothing is dropped: the queue is bounded and a full queue makes new chats wait for room
(backpressure); transient database errors are retried; an operation that still fails is logged
with its job id and counted (``iamine_ledger_failures_total``). A crash (kill -9) loses at worst
the queued and the armed operations: their chats are not charged (a hold written before the crash
stays open until its TTL, then reads as voided, and the periodic sweep records its expiry). The
lifespan writes the armed holds and drains the queue on a clean shutdown.

"Always answer" holds for money: a user whose latest hold came back unfunded is served at
:data:`UNFUNDED_PRIORITY`, never refused; a funded hold (after a grant or a mint) lifts it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import anyio
import asyncpg
import structlog

from economy.accounts import AccountKey
from economy.errors import LedgerError
from economy.ledger import Clock, Ledger
from economy.pricing import LedgerPolicy, Usage
from federation.overflow import PeerCharge
from hub.config import EconomySettings
from hub.observability import Metrics
from inference.agents import Meter
from inference.budget import prompt_tokens_floor
from inference.dispatch import BACKGROUND_PRIORITY, JobEvent
from inference.link import JobHandle
from inference.pool_config import PoolConfig
from inference.protocol import Chunk, Done, Job

log = structlog.get_logger()

UNFUNDED_PRIORITY = BACKGROUND_PRIORITY * 2
"""Queue priority of a user whose balance ran out: behind users (0) and the hub's own work."""

TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.TransactionRollbackError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
)
"""Database errors worth another try: the connection, a deadlock or serialization failure."""


@dataclass(eq=False)
class Ticket:
    """One billed chat: its job, who pays, the policy it started under, and its hold.

    The payer is the user ``user_id``, or the peer pool ``peer`` for a chat it forwarded here.
    """

    job: Job
    user_id: UUID | None
    ledger: Ledger
    expected_tokens: int
    peer: str | None = None
    held: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the hold was applied (or failed for good): the post and the void wait for it."""
    timer: asyncio.TimerHandle | None = None
    """Queues the armed hold when it fires (the chat is still running)."""
    hold_written: bool = False
    usage: Usage | None = None
    charged: int | None = None
    """The usage and micro-credits the post charges, known once the answer ended (a receipt)."""

    @property
    def payer(self) -> UUID | AccountKey:
        """The account the hold reserves on."""
        if self.peer is not None:
            return AccountKey.peer_pool(self.peer)
        assert self.user_id is not None
        return self.user_id

    @property
    def job_id(self) -> str:
        """The chat's job id: the ledger's key for the hold, the post and the void."""
        return self.job.job_id


Write = Callable[[asyncpg.Connection], Awaitable[None]]


@dataclass(frozen=True)
class _Op:
    name: str
    ticket: Ticket
    run: Write


def prompt_bytes(job: Job) -> int:
    """UTF-8 bytes of what the worker was asked (messages, tools): a ceiling on prompt tokens."""
    sent: list[object] = [job.messages, job.tools or []]
    return len(json.dumps(sent, ensure_ascii=False).encode())


def hub_usage(job: Job, done: Done, chunks: int, served_model: str) -> Usage:
    """The usage to charge: the worker's report, bounded by what the hub relayed and sent."""
    reported = done.usage
    return Usage(
        served_model,
        max(min(reported.prompt_tokens, prompt_bytes(job)), 0),
        max(min(reported.completion_tokens, chunks), 0),
    )


def peer_amount(charge: PeerCharge, usage: Usage) -> int:
    """What a peer-served chat costs its user: the peer's charge, bounded by its gossiped price.

    The bound is the price per 1,000 tokens the peer gossiped times the tokens this hub saw
    (``usage``, already bounded by what it relayed): a peer cannot bill more than it offered.
    """
    tokens = usage.prompt_tokens + usage.completion_tokens
    ceiling = -(-charge.price_per_1k * tokens // 1_000)
    return max(min(charge.receipt.amount, ceiling), 0)


class Billing:
    """Queues the chat path's ledger operations and applies them off the request path."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: EconomySettings,
        config: Callable[[], PoolConfig],
        metrics: Metrics,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._queue: asyncio.Queue[_Op] = asyncio.Queue(maxsize=settings.queue_size)
        # Holds with their endings (nothing else waits on them): committed in groups.
        self._whole: asyncio.Queue[_Op] = asyncio.Queue(maxsize=settings.queue_size)
        self._ledger = Ledger(config().ledger, clock)
        self._granted: set[UUID] = set()
        self._armed: dict[str, Ticket] = {}  # job id → ticket whose hold is not queued yet
        self._unfunded: set[UUID] = set()
        metrics.ledger_pending.set_function(lambda: self.pending)

    @property
    def pending(self) -> int:
        """Operations queued and not yet applied."""
        return self._queue.qsize() + self._whole.qsize()

    def priority(self, user_id: UUID) -> int:
        """Queue priority of the user's next chat: lowest while their latest hold was unfunded."""
        return UNFUNDED_PRIORITY if user_id in self._unfunded else 0

    def ledger(self) -> Ledger:
        """The ledger under the live pool config's policy (a new policy, a new ledger)."""
        policy: LedgerPolicy = self._config().ledger
        if self._ledger.policy is not policy:
            self._ledger = Ledger(policy, self._clock)
        return self._ledger

    async def open(self, job: Job, user_id: UUID | None, *, peer: str | None = None) -> Ticket:
        """Arm the hold of a chat about to be placed; waits only while the queue is full.

        The hold is queued ``hold_delay_s`` from now unless the chat ends first (see the
        module's docstring); at once when the delay is 0 or the queue is full (backpressure).
        ``peer`` names the peer pool that forwarded the chat here: it pays, like a user.
        """
        config = self._config()
        expected = job.params.max_tokens or config.default_expected_tokens
        ticket = Ticket(job, user_id, self.ledger(), expected, peer=peer)
        delay = self._settings.hold_delay_s
        if delay > 0 and not self._whole.full():
            self._armed[ticket.job_id] = ticket
            ticket.timer = asyncio.get_running_loop().call_later(delay, self._hold_now, ticket)
        else:
            await self._put(self._hold_op(ticket))
        return ticket

    def _hold_op(self, ticket: Ticket) -> _Op:
        return _Op("hold", ticket, lambda conn: self._hold(conn, ticket))

    def _hold_now(self, ticket: Ticket) -> None:
        """Queue an armed hold (its chat is still running); a full queue re-arms it."""
        if ticket.job_id not in self._armed:
            return
        try:
            self._queue.put_nowait(self._hold_op(ticket))
        except asyncio.QueueFull:
            loop = asyncio.get_running_loop()
            ticket.timer = loop.call_later(self._settings.hold_delay_s, self._hold_now, ticket)
            return
        del self._armed[ticket.job_id]

    async def _end(self, name: str, ticket: Ticket, run: Write) -> None:
        """Queue a chat's post or void, with its hold in one transaction if still armed."""
        if self._armed.pop(ticket.job_id, None) is None:
            await self._put(_Op(name, ticket, run))
            return
        if ticket.timer is not None:
            ticket.timer.cancel()

        async def both(conn: asyncpg.Connection) -> None:
            await self._hold(conn, ticket, then=lambda: run(conn))

        await self._whole.put(_Op(f"hold+{name}", ticket, both))

    def meter(self, user_id: UUID, charges: list[PeerCharge] | None = None) -> Meter:
        """Book a user's sub-agent runs like their chats: a hold, then a post or a void.

        ``charges`` is the peer step's list: a run a peer served is owed to that peer.
        """

        async def book(
            job: Job, events: AsyncIterator[JobEvent], trace: list[JobHandle]
        ) -> AsyncIterator[JobEvent]:
            return self.bill(await self.open(job, user_id), events, trace, charges)

        return book

    async def bill(
        self,
        ticket: Ticket,
        events: AsyncIterator[JobEvent],
        trace: list[JobHandle],
        charges: list[PeerCharge] | None = None,
    ) -> AsyncGenerator[JobEvent, None]:
        """Relay a chat's events; when they end, queue its post (answered) or void (not).

        ``charges`` receives a peer's signed charge when the chat was served by a peer pool:
        the user then pays the peer's charge (see :func:`peer_amount`), owed to that peer.
        """
        chunks = 0
        done: Done | None = None
        try:
            async for event in events:
                if isinstance(event, Chunk):
                    chunks += event.pieces
                elif isinstance(event, Done):
                    done = event
                yield event
        finally:
            # Shielded: this runs while a departed client's request is being cancelled.
            with anyio.CancelScope(shield=True):
                charge = next((c for c in charges or () if c.receipt.job == ticket.job_id), None)
                if charge is not None:
                    await self._settle_peer(ticket, done, chunks, charge)
                else:
                    await self._settle(ticket, done, chunks, trace)
            if isinstance(events, AsyncGenerator):
                await events.aclose()

    async def _settle(
        self, ticket: Ticket, done: Done | None, chunks: int, trace: list[JobHandle]
    ) -> None:
        finisher = trace[-1] if trace else None
        owner = None if finisher is None else finisher.worker.owner_id
        if done is None or finisher is None or owner is None:
            memo = "not answered" if done is None else "no worker owner to credit"
            await self._end("void", ticket, lambda conn: self._void(conn, ticket, memo))
            return
        usage = hub_usage(finisher.job, done, chunks, finisher.job.model)
        worker_id = finisher.worker.record_id
        ticket.usage, ticket.charged = usage, ticket.ledger.policy.cost(usage)

        async def post(conn: asyncpg.Connection) -> None:
            await ticket.ledger.post(conn, ticket.job_id, usage, owner, worker_id=worker_id)

        await self._end("post", ticket, post)

    async def _settle_peer(
        self, ticket: Ticket, done: Done | None, chunks: int, charge: PeerCharge
    ) -> None:
        if done is None:
            await self._end("void", ticket, lambda c: self._void(c, ticket, "not answered"))
            return
        usage = ticket.usage = hub_usage(ticket.job, done, chunks, ticket.job.model)
        amount = ticket.charged = peer_amount(charge, usage)
        peer = charge.receipt.peer

        async def post(conn: asyncpg.Connection) -> None:
            await ticket.ledger.post_to_peer(conn, ticket.job_id, usage, peer, amount)

        await self._end("post", ticket, post)

    async def _put(self, op: _Op) -> None:
        await self._queue.put(op)

    async def _hold(
        self,
        conn: asyncpg.Connection,
        ticket: Ticket,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Write the ticket's hold (and ``then``, its post or void, in the same transaction)."""
        user, ledger = ticket.user_id, ticket.ledger
        if user is not None and ticket.peer is None and user not in self._granted:
            await ledger.grant_trial(conn, user)
            self._granted.add(user)
        floor = prompt_tokens_floor(ticket.job.messages, ticket.job.tools)
        cost = ledger.policy.expected_cost(ticket.job.model, floor, ticket.expected_tokens)
        if then is None:
            hold = await ledger.hold(conn, ticket.job_id, ticket.payer, cost)
        else:
            hold, _ = await ledger.hold_then(conn, ticket.job_id, ticket.payer, cost, then)
        ticket.hold_written = True
        if user is None or ticket.peer is not None:
            return
        if hold.funded:
            self._unfunded.discard(user)
        else:
            self._unfunded.add(user)

    async def _void(self, conn: asyncpg.Connection, ticket: Ticket, memo: str) -> None:
        await ticket.ledger.void(conn, ticket.job_id, memo=memo)

    async def run(self) -> None:
        """Apply operations forever (cancelled by the lifespan, which then calls :meth:`drain`)."""
        async with anyio.create_task_group() as writers:
            for _ in range(self._settings.writers):
                writers.start_soon(self._consume)
            writers.start_soon(self._consume_groups)
            if self._settings.expire_interval_s > 0:
                writers.start_soon(self._sweep_expired)

    async def drain(self) -> None:
        """Apply every armed hold, then everything still queued, in order (a hold before its post).

        An armed hold has no queued post (that would have taken it along), so it goes first.
        """
        while self._armed:
            _, ticket = self._armed.popitem()
            if ticket.timer is not None:
                ticket.timer.cancel()
            await self._apply(self._hold_op(ticket))
        while not self._whole.empty():
            await self._apply_group(self._take_group())
        while not self._queue.empty():
            await self._apply(self._queue.get_nowait())

    async def _consume(self) -> None:
        while True:
            op = await self._queue.get()
            # Shielded: a shutdown lets the operation in hand finish; drain() applies the rest.
            with anyio.CancelScope(shield=True):
                await self._apply(op)

    async def _consume_groups(self) -> None:
        """Commit holds with their endings in groups: what arrives within the window, together.

        One writer is enough: every job's transfers lock the clearing account, so jobs commit
        one after another whatever the number of writers; a group pays one commit for all.
        """
        while True:
            first = await self._whole.get()
            try:
                if self._whole.qsize() < self._settings.group_size - 1:
                    await anyio.sleep(self._settings.group_window_s)
            finally:
                # Shielded, and also when shutdown cancels the wait: the ops in hand are applied.
                with anyio.CancelScope(shield=True):
                    await self._apply_group(
                        [first, *self._take_group(self._settings.group_size - 1)]
                    )

    def _take_group(self, limit: int | None = None) -> list[_Op]:
        limit = self._settings.group_size if limit is None else limit
        ops: list[_Op] = []
        while len(ops) < limit and not self._whole.empty():
            ops.append(self._whole.get_nowait())
        return ops

    async def _apply_group(self, ops: list[_Op]) -> None:
        """Apply ``ops`` in one transaction; if that fails, each on its own (with retries)."""
        if len(ops) > 1:
            self._metrics.ledger_group_size.observe(len(ops))
            try:
                async with self._pool.acquire() as conn, self._ledger.group_transaction(conn):
                    for op in ops:
                        await op.run(conn)
            # Whatever one job raised, its group is applied again job by job, where it is
            # retried or counted alone: the writer survives it.
            except Exception as exc:
                log.warning("ledger_group_failed", error=repr(exc), ops=len(ops))
                for op in ops:
                    # Rolled back: what the group's run noted in memory did not happen.
                    op.ticket.hold_written = False
                    if op.ticket.user_id is not None:
                        self._granted.discard(op.ticket.user_id)
            else:
                for op in ops:
                    op.ticket.held.set()
                return
        for op in ops:
            await self._apply(op)

    async def _apply(self, op: _Op) -> None:
        """Apply one operation, retrying transient database errors; count it if it fails."""
        ticket = op.ticket
        holds = op.name.startswith("hold")
        if not holds:
            await ticket.held.wait()  # set once the hold was applied or failed
            if not ticket.hold_written:
                self._fail(op, "its hold was never written")
                return
        try:
            await self._attempts(op)
        # The top-level handler of the writer: whatever an operation raises, the writer survives.
        except Exception as exc:
            self._fail(op, repr(exc))
        finally:
            if holds:
                ticket.held.set()

    async def _attempts(self, op: _Op) -> None:
        delay = self._settings.retry_backoff_s
        for attempt in range(1, self._settings.retry_attempts + 1):
            try:
                async with self._pool.acquire() as conn:
                    await op.run(conn)
                return
            except LedgerError:
                raise
            except TRANSIENT as exc:
                if attempt == self._settings.retry_attempts:
                    raise
                self._metrics.ledger_retries.labels(op.name).inc()
                log.warning("ledger_retry", op=op.name, job_id=op.ticket.job_id, error=repr(exc))
                await anyio.sleep(delay)
                delay *= 2

    def _fail(self, op: _Op, error: str) -> None:
        self._metrics.ledger_failures.labels(op.name).inc()
        log.error("ledger_operation_failed", op=op.name, job_id=op.ticket.job_id, error=error)

    async def _sweep_expired(self) -> None:
        """Record the expiry of holds past their TTL (a crashed hub's lost jobs)."""
        while True:
            await anyio.sleep(self._settings.expire_interval_s)
            try:
                async with self._pool.acquire() as conn:
                    expired = await self.ledger().expire_holds(conn)
            except (LedgerError, *TRANSIENT) as exc:
                self._metrics.ledger_failures.labels("expire").inc()
                log.warning("ledger_expire_failed", error=repr(exc))
                continue
            if expired:
                log.info("ledger_holds_expired", count=expired)
