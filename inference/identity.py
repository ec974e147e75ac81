"""Worker records: who a worker is, as the admin or its owner registered it, and its trust.

A worker *is* the record behind its token (migration 010). Its name, owner, allowed models,
hardware and slot cap are written here by people; the worker's ``hello`` may only narrow them
(:func:`narrow`). Everything the hub keys on a worker (router shares and speeds, exclusions,
trust, earnings) uses the record's id.

**Trust** (docs/trust.md): 0 new or slashed, 1 passed the checker's canaries, 2 established
(``verified_jobs`` past the pool's threshold with no upheld dispute), 3 granted by the admin.
Every change is kept in ``worker_trust_events`` with its reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast
from uuid import UUID

import asyncpg

from inference.protocol import ErrorCode, Hardware, InferenceError, ModelInfo

TrustLevel = Literal[0, 1, 2, 3]
NEW, VERIFIED, ESTABLISHED, GRANTED = 0, 1, 2, 3
TRUST_NAMES = {NEW: "new", VERIFIED: "verified", ESTABLISHED: "established", GRANTED: "granted"}
DEFAULT_SLOTS = 4
LOCAL_WORKER = "local"
"""The hub's own worker's record: registered by the hub alone, never by a user (a squatter would
keep the pool's local worker from ever starting)."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

_SELECT = "SELECT * FROM workers"


class WorkerRecordError(ValueError):
    """A record that cannot be written as asked (bad name, taken name, bad level)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class WorkerRecord:
    """One registered worker."""

    id: UUID
    name: str
    owner_id: UUID
    models: tuple[str, ...]
    hardware: Hardware
    max_slots: int
    trust: int
    trust_reason: str
    trust_changed_at: datetime
    verified_jobs: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> WorkerRecord:
        """A record from a ``workers`` row."""
        return cls(
            id=row["id"],
            name=row["name"],
            owner_id=row["owner_id"],
            models=tuple(row["models"]),
            hardware=cast(Hardware, row["hardware"]),
            max_slots=row["max_slots"],
            trust=row["trust"],
            trust_reason=row["trust_reason"],
            trust_changed_at=row["trust_changed_at"],
            verified_jobs=row["verified_jobs"],
            created_at=row["created_at"],
        )

    def allows_model(self, model: str) -> bool:
        """Whether the record lets this worker serve ``model`` (no list: any)."""
        return not self.models or model in self.models

    def as_dict(self) -> dict[str, object]:
        """The record as JSON-ready values (admin API, CLI)."""
        return {
            "id": str(self.id),
            "name": self.name,
            "owner_id": str(self.owner_id),
            "models": list(self.models),
            "hardware": self.hardware,
            "max_slots": self.max_slots,
            "trust": self.trust,
            "trust_name": TRUST_NAMES[self.trust],
            "trust_reason": self.trust_reason,
            "trust_changed_at": self.trust_changed_at.isoformat(),
            "verified_jobs": self.verified_jobs,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Narrowed:
    """What a worker may serve on this link: its record narrowed by its ``hello``."""

    models: dict[str, ModelInfo]
    hardware: Hardware
    slots: int


def narrow(
    record: WorkerRecord, models: Sequence[ModelInfo], hardware: Hardware, slots: int
) -> Narrowed:
    """The record narrowed by a hello: fewer models, a smaller class, fewer slots, never more.

    A hello that claims a GPU on a CPU record is served as CPU; slots above the cap are capped;
    models outside the record's list are refused (a worker that announces only those is refused
    whole, with ``not_allowed``).
    """
    allowed = {m.id: m for m in models if record.allows_model(m.id)}
    if not allowed:
        names = ", ".join(m.id for m in models)
        raise InferenceError(
            ErrorCode.NOT_ALLOWED,
            f"worker {record.name!r} is not registered for {names}; "
            f"it may serve {', '.join(record.models)}",
        )
    served_hardware: Hardware = "cpu" if record.hardware == "cpu" else hardware
    return Narrowed(allowed, served_hardware, min(slots, record.max_slots))


def check_name(name: str) -> str:
    """A worker name as the database accepts it."""
    if not NAME_PATTERN.match(name):
        raise WorkerRecordError(
            "A worker name is 1–64 letters, digits, '_', '.', '@' or '-', starting with a "
            f"letter or digit; got {name!r}.",
            param="name",
        )
    return name


def check_level(level: int) -> int:
    """A trust level 0–3."""
    if level not in TRUST_NAMES:
        raise WorkerRecordError(f"Trust levels are 0–3; got {level}.", param="trust")
    return level


async def register_worker(
    conn: asyncpg.Connection,
    *,
    name: str,
    owner_id: UUID,
    hardware: Hardware = "cpu",
    max_slots: int = DEFAULT_SLOTS,
    models: Sequence[str] = (),
    trust: int = NEW,
    reason: str = "registered",
    hub_own: bool = False,
) -> WorkerRecord:
    """Register a worker; a taken or reserved name is a :class:`WorkerRecordError` on ``name``.

    ``hub_own``: the hub registering its own local worker, the only one that may be named
    :data:`LOCAL_WORKER`.
    """
    check_name(name)
    if name == LOCAL_WORKER and not hub_own:
        raise WorkerRecordError(f"The worker name {name!r} is the hub's own.", param="name")
    check_level(trust)
    if not 1 <= max_slots <= 1024:
        raise WorkerRecordError(f"Slots are 1–1024; got {max_slots}.", param="max_slots")
    try:
        row = await conn.fetchrow(
            "INSERT INTO workers (name, owner_id, hardware, max_slots, models, trust, "
            "trust_reason) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            name,
            owner_id,
            hardware,
            max_slots,
            sorted(set(models)),
            trust,
            reason,
        )
    except asyncpg.UniqueViolationError:
        raise WorkerRecordError(f"A worker named {name!r} exists.", param="name") from None
    return WorkerRecord.from_row(row)


async def free_name(conn: asyncpg.Connection, wanted: str) -> str:
    """``wanted`` if no worker has it, else ``wanted-2``, ``wanted-3``…"""
    base = wanted[:58]
    name, n = base, 1
    while name == LOCAL_WORKER or await conn.fetchval(
        "SELECT 1 FROM workers WHERE name = $1", name
    ):
        n += 1
        name = f"{base}-{n}"
    return name


async def update_worker(
    conn: asyncpg.Connection,
    worker_id: UUID,
    *,
    hardware: Hardware | None = None,
    max_slots: int | None = None,
    models: Sequence[str] | None = None,
) -> WorkerRecord:
    """Change what a worker is registered for (the admin or its owner)."""
    if max_slots is not None and not 1 <= max_slots <= 1024:
        raise WorkerRecordError(f"Slots are 1–1024; got {max_slots}.", param="max_slots")
    row = await conn.fetchrow(
        "UPDATE workers SET hardware = coalesce($2, hardware), "
        "max_slots = coalesce($3, max_slots), models = coalesce($4, models) "
        "WHERE id = $1 RETURNING *",
        worker_id,
        hardware,
        max_slots,
        sorted(set(models)) if models is not None else None,
    )
    if row is None:
        raise WorkerRecordError(f"No worker has id {worker_id}.", param="worker")
    return WorkerRecord.from_row(row)


async def get_worker(conn: asyncpg.Connection, worker_id: UUID) -> WorkerRecord | None:
    """A record by id."""
    row = await conn.fetchrow(_SELECT + " WHERE id = $1", worker_id)
    return None if row is None else WorkerRecord.from_row(row)


async def find_worker(conn: asyncpg.Connection, name: str) -> WorkerRecord | None:
    """A record by name."""
    row = await conn.fetchrow(_SELECT + " WHERE name = $1", name)
    return None if row is None else WorkerRecord.from_row(row)


async def list_workers(
    conn: asyncpg.Connection, owner_id: UUID | None = None
) -> list[WorkerRecord]:
    """Every record (or one owner's), by name."""
    rows = await conn.fetch(
        _SELECT + " WHERE $1::uuid IS NULL OR owner_id = $1 ORDER BY name",
        owner_id,
    )
    return [WorkerRecord.from_row(r) for r in rows]


async def set_trust(
    conn: asyncpg.Connection, worker_id: UUID, level: int, reason: str
) -> WorkerRecord:
    """Set a worker's trust level and record why (a no-op change is not recorded)."""
    check_level(level)
    async with conn.transaction():
        before = await conn.fetchval(
            "SELECT trust FROM workers WHERE id = $1 FOR UPDATE", worker_id
        )
        if before is None:
            raise WorkerRecordError(f"No worker has id {worker_id}.", param="worker")
        row = await conn.fetchrow(
            "UPDATE workers SET trust = $2::smallint, trust_reason = $3, "
            "trust_changed_at = now(), "
            "verified_jobs = CASE WHEN $2::smallint = 0 THEN 0 ELSE verified_jobs END "
            "WHERE id = $1 RETURNING *",
            worker_id,
            level,
            reason,
        )
        if before != level:
            await conn.execute(
                "INSERT INTO worker_trust_events (worker_id, from_level, to_level, reason) "
                "VALUES ($1, $2, $3, $4)",
                worker_id,
                before,
                level,
                reason,
            )
    return WorkerRecord.from_row(row)


async def reset_trust(conn: asyncpg.Connection, worker_id: UUID, reason: str) -> WorkerRecord:
    """Back to 0 (a slash): canaries must pass again before the worker gets jobs that need 1."""
    return await set_trust(conn, worker_id, NEW, reason)


async def promote_verified(conn: asyncpg.Connection, worker_id: UUID, reason: str) -> bool:
    """0 → 1 after passing canaries; True when the level changed (higher levels stay)."""
    record = await get_worker(conn, worker_id)
    if record is None or record.trust != NEW:
        return False
    await set_trust(conn, worker_id, VERIFIED, reason)
    return True


async def count_verified_jobs(
    conn: asyncpg.Connection, counts: Mapping[UUID, int], established_after: int
) -> list[UUID]:
    """Add jobs that cleared their dispute window; promote 1 → 2 past the threshold.

    Returns the workers promoted. Settlement calls it once per period.
    """
    promoted = []
    for worker_id, count in counts.items():
        row = await conn.fetchrow(
            "UPDATE workers SET verified_jobs = verified_jobs + $2 WHERE id = $1 "
            "RETURNING trust, verified_jobs",
            worker_id,
            count,
        )
        if row is None or row["trust"] != VERIFIED:
            continue
        if row["verified_jobs"] >= established_after:
            await set_trust(conn, worker_id, ESTABLISHED, f"{row['verified_jobs']} verified jobs")
            promoted.append(worker_id)
    return promoted


async def trust_events(
    conn: asyncpg.Connection, worker_id: UUID, limit: int = 50
) -> list[dict[str, object]]:
    """A worker's newest trust changes."""
    rows = await conn.fetch(
        "SELECT from_level, to_level, reason, created_at FROM worker_trust_events "
        "WHERE worker_id = $1 ORDER BY id DESC LIMIT $2",
        worker_id,
        limit,
    )
    return [{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows]
