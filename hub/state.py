"""The typed state the lifespan yields: every long-lived resource of a running hub."""

from __future__ import annotations

from dataclasses import dataclass

from federation.gossip import Gossip
from federation.notes_sync import NoteSync
from federation.service import Federation
from hub.auth import TokenResolver
from hub.billing import Billing
from hub.bookkeeping import BackgroundWriter
from hub.config import Settings
from hub.db import Database
from hub.local_worker import LocalWorker
from hub.observability import Metrics
from hub.preferences import PreferenceCache
from hub.scheduler import Scheduler
from hub.semantic import SemanticMemory
from inference.registry import WorkerRegistry
from memory.compaction import Compactor


@dataclass
class HubState:
    """Long-lived resources, built once in the lifespan and handed to routes through deps."""

    settings: Settings
    db: Database
    tokens: TokenResolver
    metrics: Metrics
    workers: WorkerRegistry
    writer: BackgroundWriter
    preferences: PreferenceCache
    compactor: Compactor | None = None
    scheduler: Scheduler | None = None
    semantic: SemanticMemory | None = None
    local_worker: LocalWorker | None = None
    billing: Billing | None = None
    federation: Federation | None = None
    note_sync: NoteSync | None = None
    gossip: Gossip | None = None
