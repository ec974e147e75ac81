"""Settings: one pydantic-settings root (prefix ``IAMINE_``) composed of one model per package.

Only this module reads the environment (and an optional ``.env`` file). Domain packages receive
their own settings model as an argument. Nested models are set with a double underscore, for
example ``IAMINE_SERVER__PORT=8080``. Every field is documented in ``docs/configuration.md``; a test
fails when one is missing there.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from federation.settings import FederationSettings
from hub.bus import BusSettings
from hub.web.settings import WebSettings
from inference.agents import AgentSettings
from inference.checker import CheckerSettings
from inference.red import RedSettings
from inference.settings import InferenceSettings
from memory.settings import MemorySettings


def default_data_dir() -> Path:
    """Return the per-user data directory (``~/.local/share/iamine`` on Linux)."""
    return Path(platformdirs.user_data_dir("iamine", appauthor=False))


class ServerSettings(BaseModel):
    """HTTP server: where the hub listens and how much it accepts."""

    host: str = Field("127.0.0.1", description="Interface `iamine serve` binds to.")
    port: int = Field(8420, ge=1, le=65535, description="TCP port `iamine serve` listens on.")
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body accepted; larger bodies get 413 `request_too_large`.",
    )
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="Seconds an idle HTTP/1.1 connection stays open. Longer than clients' own "
        "pool expiry (httpx and the OpenAI SDKs: 5 s), so a client never reuses a connection the "
        "hub is closing at that instant (a reset POST is not retried).",
    )
    mcp_allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Host headers accepted on /mcp besides loopback (DNS-rebinding protection), like "
            "`hub.example.org:*`; `*` turns the check off."
        ),
    )
    log_format: str = Field(
        "json", pattern="^(json|console)$", description="Log renderer: `json` or `console`."
    )
    log_level: str = Field(
        "info",
        pattern="^(debug|info|warning|error)$",
        description="Minimum level of log lines written to stderr.",
    )


class DatabaseSettings(BaseModel):
    """PostgreSQL connection pool and migrations."""

    pool_min_size: int = Field(1, ge=0, description="Connections the pool keeps open when idle.")
    pool_max_size: int = Field(10, ge=1, description="Most connections the pool opens at once.")
    command_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a single SQL statement may run before it is cancelled."
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for a new database connection."
    )
    auto_migrate: bool = Field(
        True, description="Apply pending migrations when the hub or a CLI command starts."
    )
    write_window_s: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Seconds the background writer waits after a write for more before it "
        "commits them together (L1, L2, conversation bookkeeping); 0 commits at once.",
    )
    write_queue_size: int = Field(
        10_000,
        ge=1,
        description=(
            "Background writes (L1, L2, exclusions) that may wait for the database; when full, a "
            "further write is dropped, logged and counted in `iamine_bookkeeping_dropped_total`."
        ),
    )


class AuthSettings(BaseModel):
    """Bearer tokens: cache and bookkeeping."""

    token_cache_ttl_s: float = Field(
        30.0,
        ge=0,
        description=(
            "Seconds a resolved token stays cached in the hub process before it is looked up "
            "again. Revocation does not wait for it: see `revocation_check_s`. 0 disables the "
            "cache."
        ),
    )
    token_cache_size: int = Field(10_000, ge=0, description="Most tokens kept in the cache.")
    last_used_flush_s: float = Field(
        5.0, gt=0, description="Seconds between batched writes of tokens' last-used times."
    )
    revocation_check_s: float = Field(
        0.5,
        gt=0,
        description=(
            "Seconds between re-reads of the tokens this hub has cached or that hold worker links "
            "and MCP streams open: a token revoked, expired or whose user was disabled by another "
            "process (the CLI, another hub) stops working, and its links close, within this bound."
        ),
    )


class LocalWorkerSettings(BaseModel):
    """How the hub restarts its local worker process (whether it runs: `inference.local_worker`)."""

    restart_initial_s: float = Field(
        1.0, gt=0, description="Seconds before the first restart of a local worker that exited."
    )
    restart_max_s: float = Field(
        60.0, gt=0, description="Longest wait between restarts; the wait doubles up to it."
    )
    restart_reset_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a local worker must run before its next exit counts as a new crash.",
    )


class JobsSettings(BaseModel):
    """The hub's scheduler: which jobs run, and how often (0 runs a job only on demand)."""

    enabled: bool = Field(
        True, description="Run jobs on their schedule; off, they run only on demand."
    )
    l1_purge_interval_s: float = Field(
        3_600.0, ge=0, description="Seconds between purges of expired L1 messages."
    )
    checker_interval_s: float = Field(
        900.0, ge=0, description="Seconds between checker runs over every worker."
    )
    red_interval_s: float = Field(10_800.0, ge=0, description="Seconds between RED runs.")
    settlement_interval_s: float = Field(3_600.0, ge=0, description="Seconds between settlements.")
    fact_indexes_interval_s: float = Field(
        3_600.0,
        ge=0,
        description="Seconds between runs of fact_indexes (an HNSW index per large user).",
    )
    run_timeout_s: float = Field(
        900.0, gt=0, description="Most seconds one job run may take before it is cancelled."
    )


class EconomySettings(BaseModel):
    """The $IAMINE ledger on the chat path (hub/billing.py; prices live in the pool config)."""

    enabled: bool = Field(
        True, description="Hold, post and void every user chat on the ledger; off, chats are free."
    )
    queue_size: int = Field(
        10_000,
        ge=1,
        description="Ledger operations that may wait for the database, in each of its two queues "
        "(single operations; chats held and ended together); when full, new chats wait for room "
        "(backpressure): an operation is never dropped.",
    )
    writers: int = Field(
        2, ge=1, le=32, description="Connections applying ledger operations at once."
    )
    retry_attempts: int = Field(
        6,
        ge=1,
        description="Tries of an operation that meets a transient database error before it is "
        "counted in `iamine_ledger_failures_total` (its hold then expires, reading as voided).",
    )
    retry_backoff_s: float = Field(
        0.05,
        gt=0,
        description="Seconds before the first retry; each further retry waits twice as long.",
    )
    hold_delay_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Seconds a chat's hold may wait before it is written: a chat that ends sooner "
        "is held and posted (or voided) in one transaction, one commit instead of two and no "
        "ledger work while it streams; 0 writes every hold at placement.",
    )
    group_window_s: float = Field(
        0.05,
        ge=0,
        le=5,
        description="Seconds the ledger's group writer waits for more finished chats before it "
        "commits what it has in one transaction (group commit); 0 commits what is queued at once.",
    )
    group_size: int = Field(
        64,
        ge=1,
        le=1024,
        description="Most finished chats committed in one ledger transaction.",
    )
    expire_interval_s: float = Field(
        60.0,
        ge=0,
        description="Seconds between sweeps that record the expiry of holds past their TTL (the "
        "holds of jobs a crashed hub lost); 0 leaves it to each user's next hold.",
    )


class Settings(BaseSettings):
    """Root settings of the hub, read from ``IAMINE_*`` variables and ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix="IAMINE_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description=(
            "Directory for the embedded database, the admin token file and the hub lock "
            "(default: the platform's user data directory, e.g. `~/.local/share/iamine`)."
        ),
    )
    database_url: SecretStr | None = Field(
        None,
        description=(
            "`postgresql://` URL of a server with the pgvector extension. When unset, an embedded "
            "PostgreSQL 17 with pgvector runs inside `data_dir`."
        ),
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    local_worker: LocalWorkerSettings = Field(default_factory=LocalWorkerSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    checker: CheckerSettings = Field(default_factory=CheckerSettings)
    red: RedSettings = Field(default_factory=RedSettings)
    agents: AgentSettings = Field(default_factory=AgentSettings)
    economy: EconomySettings = Field(default_factory=EconomySettings)
    federation: FederationSettings = Field(default_factory=FederationSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    bus: BusSettings = Field(default_factory=BusSettings)
