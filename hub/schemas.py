"""Request and response bodies of the hub's own (non-OpenAI) HTTP API."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from hub.accounts import TokenRecord, User


class TokenOut(BaseModel):
    """A token as listed: never its text."""

    id: UUID
    prefix: str
    name: str
    user: str | None
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, record: TokenRecord) -> TokenOut:
        """Build from a database record."""
        return cls(
            id=record.id,
            prefix=record.prefix,
            name=record.name,
            user=record.user_name,
            scopes=list(record.scopes),
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            last_used_at=record.last_used_at,
        )


class IssuedTokenOut(TokenOut):
    """A freshly issued token: ``token`` is shown this once and never again."""

    token: str


class TokenCreate(BaseModel):
    """Ask for a new token."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=100)
    scopes: list[str] = Field(default_factory=lambda: ["user"], min_length=1)
    expires_in_s: int | None = Field(None, gt=0, le=10 * 365 * 86400)

    def expires_at(self, now: datetime) -> datetime | None:
        """Absolute expiry for a token created at ``now``."""
        return now + timedelta(seconds=self.expires_in_s) if self.expires_in_s else None


class UserCreate(BaseModel):
    """Create a user (admin)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)


class UserOut(BaseModel):
    """A user as listed."""

    id: UUID
    name: str
    created_at: datetime
    disabled_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserOut:
        """Build from a database record."""
        return cls(
            id=user.id, name=user.name, created_at=user.created_at, disabled_at=user.disabled_at
        )
