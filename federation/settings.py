"""Federation settings (``IAMINE_FEDERATION__*``): off unless enabled with a public URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator


class OverflowSettings(BaseModel):
    """Chats this pool forwards to peers, and those it serves for them (docs/federation.md)."""

    enabled: bool = Field(
        True, description="Forward a chat no local worker can take soon to a peer that serves it."
    )
    wait_s: float = Field(
        5.0,
        ge=0,
        description="Predicted local wait (seconds) above which a chat goes to a peer; a model "
        "no local worker (of enough trust) serves goes at once.",
    )
    hop_limit: int = Field(
        1,
        ge=1,
        le=4,
        description="Pools a forwarded chat may pass through; this pool serves a forwarded chat "
        "on its own workers only, never forwarding it further.",
    )
    stall_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a forwarded chat's stream may stay silent before the "
        "peer counts as failed.",
    )
    peer_tries: int = Field(
        2,
        ge=1,
        le=8,
        description="Peers tried, best first, before a chat falls back to the "
        "local doctrine (queue, fallback model, degraded answer).",
    )


def normalise_origin(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL with no path, query or credentials.

    A pool is addressed by its origin: the signed ``@authority`` of every request to it must be
    this origin's authority. Raises ``ValueError`` on anything else.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"a pool URL is an origin, with no path, query or credentials: {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}") from exc
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


class NotesSyncSettings(BaseModel):
    """Anti-entropy of `fed:` notes between peers (docs/federation.md)."""

    batch_rows: int = Field(
        200, ge=1, le=1000, description="Most note versions in one push or Merkle message."
    )
    batch_bytes: int = Field(
        524_288,
        ge=65_536,
        description="Bytes of note versions after which a message is cut (below every peer's "
        "`IAMINE_SERVER__MAX_BODY_BYTES`).",
    )
    reconcile_segments: int = Field(
        128, ge=1, le=1024, description="Most differing tree segments one Merkle exchange ships."
    )
    tombstone_min_age_s: float = Field(
        86_400.0,
        ge=0,
        description="Seconds a deleted `fed:` note is kept at least, even once every live peer "
        "acknowledged it.",
    )


class FederationSettings(BaseModel):
    """Pool identity, peering and signed requests between pools (docs/federation.md)."""

    enabled: bool = Field(
        False,
        description="Answer `/v1/federation/*` and allow invites and peering; needs `public_url`.",
    )
    public_url: str | None = Field(
        None,
        description="This hub's origin as peers reach it (`https://hub.example.org`); every "
        "signed request to this pool must name its authority.",
    )
    max_age_s: int = Field(
        300, ge=10, le=3600, description="Oldest signature `created` time accepted, in seconds."
    )
    clock_skew_s: int = Field(
        10, ge=0, le=300, description="Seconds a signature's `created` may lie in the future."
    )
    request_timeout_s: float = Field(
        10.0, gt=0, description="Seconds one request to a peer may take, connection included."
    )
    invite_ttl_s: int = Field(
        3600, ge=60, le=30 * 86_400, description="Default lifetime of an invite, in seconds."
    )
    backoff_initial_s: float = Field(
        5.0, gt=0, description="Seconds before retrying a peer after its first failed call."
    )
    backoff_max_s: float = Field(
        3600.0,
        gt=0,
        description="Longest wait between tries of a failing peer (it is still probed this often).",
    )
    down_after_failures: int = Field(
        3, ge=1, description="Consecutive failed calls after which a peer reads as `down`."
    )
    nonce_purge_interval_s: float = Field(
        60.0, gt=0, description="Seconds between purges of expired request nonces."
    )
    notes: NotesSyncSettings = Field(default_factory=NotesSyncSettings)
    gossip_interval_s: float = Field(
        5.0, gt=0, description="Seconds between gossip rounds (the `federation_sync` job)."
    )
    gossip_fanout: int = Field(
        3, ge=1, le=32, description="Peers this pool gossips with in each round, chosen at random."
    )
    suspect_after_s: float = Field(
        30.0,
        gt=0,
        description="Seconds without a new heartbeat from a peer before this pool suspects it.",
    )
    dead_quorum: int = Field(
        0,
        ge=0,
        description="Pools (this one included) that must suspect a peer before it is declared "
        "dead; 0 means a majority of the live admitted peers and this pool.",
    )
    admit_quorum: int = Field(
        0,
        ge=0,
        description="Admitted peers that must vouch for a pool learned through gossip before it "
        "is admitted without an admin; 0 leaves every candidate to the admin.",
    )
    capability_max_age_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a peer's gossiped capabilities stay usable without a fresh round.",
    )
    gossip_log_keep_s: float = Field(
        86_400.0, gt=0, description="Seconds the `gossip_log` keeps each exchange."
    )
    overflow: OverflowSettings = Field(default_factory=OverflowSettings)

    @field_validator("public_url")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else normalise_origin(value)

    @model_validator(mode="after")
    def _enabled_needs_url(self) -> FederationSettings:
        if self.enabled and self.public_url is None:
            raise ValueError("federation.enabled needs federation.public_url")
        return self

    @property
    def active(self) -> bool:
        """Whether this hub takes part in federation."""
        return self.enabled and self.public_url is not None
