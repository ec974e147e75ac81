"""Request and response bodies of the hub's own (non-OpenAI) HTTP API, and their strict base.

Every public request body derives from :class:`StrictBody`: a JSON value is taken as its own type,
never coerced, so what the OpenAPI schema refuses the hub refuses too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
)

from hub.accounts import TokenRecord, User

NUL_MESSAGE = "Text may not contain the NUL character (U+0000)."


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(_contains_nul(item) for item in value)
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    return False


def _refuse_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError(NUL_MESSAGE)
    return value


class StrictBody(BaseModel):
    """Base of public request bodies: pydantic's strict mode, so no JSON value is coerced.

    The default (lax) mode reads ``false`` as ``0``, ``"1"`` as ``1`` and ``1`` as ``true``: a body
    the schema calls invalid would be accepted. FastAPI validates the body after ``json.loads``, in
    pydantic's Python mode, where strict mode also refuses the strings JSON carries datetimes and
    UUIDs in: declare such fields with :data:`JsonDatetime` and :data:`JsonUUID`.

    Text anywhere in the body may not hold NUL: PostgreSQL's ``text`` cannot store it, and the
    insert would fail as a 500 instead of a 400 naming the field.
    """

    model_config = ConfigDict(strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if _contains_nul(value):
            raise ValueError(NUL_MESSAGE)
        return value


def _iso_datetime(value: object) -> object:
    """A datetime as JSON carries it: an ISO 8601 string (lax mode also takes numbers)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("Input should be an ISO 8601 date-time string")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("Input should be an ISO 8601 date-time string") from None


def _in_utc_range(value: datetime) -> datetime:
    """Refuse what has no UTC time (year 1 at +01:00): the database stores UTC."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("Date-time out of range: years 1 to 9999, in UTC") from None
    return value


JsonDatetime = Annotated[
    AwareDatetime, Strict(False), BeforeValidator(_iso_datetime), AfterValidator(_in_utc_range)
]
"""A timezone-aware datetime given as an ISO 8601 string (a body field or a query parameter)."""

JsonUUID = Annotated[UUID, Strict(False)]
"""A UUID given as a string, in a :class:`StrictBody` (lax UUIDs accept only strings and UUIDs)."""

DbText = Annotated[str, AfterValidator(_refuse_nul)]
"""Text that reaches PostgreSQL from a query parameter or header: no NUL (see StrictBody)."""


class ErrorDetail(BaseModel):
    """What went wrong: OpenAI's error object."""

    message: str = Field(description="For people: what was wrong and how to fix it.")
    type: str = Field(description="OpenAI's error type, like `invalid_request_error`.")
    param: str | None = Field(description="The request field, parameter or header at fault.")
    code: str = Field(description="Machine-readable code, like `invalid_value` or `not_found`.")


class ErrorBody(BaseModel):
    """The body of every error the hub answers (``hub/errors.py`` writes it)."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request; `param` names what is wrong."},
    401: {"model": ErrorBody, "description": "No valid bearer token."},
    403: {"model": ErrorBody, "description": "The token lacks the scope (or memory key) needed."},
    404: {"model": ErrorBody, "description": "No such route or resource (or not the caller's)."},
    "4XX": {
        "model": ErrorBody,
        "description": "Another client error (409 conflict, 413 body too large, 429 pool busy).",
    },
}
"""Error answers every route may give, declared once for the OpenAPI schema (``create_app``).

Declaring ``4XX`` also keeps FastAPI from documenting a 422 the hub never sends: validation errors
are 400s in the error shape above.
"""


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
    worker_id: UUID | None = Field(
        None, description="The worker record a worker-scope token speaks for."
    )

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
            worker_id=record.worker_id,
        )


class IssuedTokenOut(TokenOut):
    """A freshly issued token: ``token`` is shown this once and never again."""

    token: str


# The users table's CHECK: refused here first, so no NUL or newline ever reaches PostgreSQL.
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class TokenCreate(StrictBody):
    """Ask for a new token."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=100)
    scopes: list[str] = Field(default_factory=lambda: ["user"], min_length=1)
    expires_in_s: int | None = Field(None, gt=0, le=10 * 365 * 86400)
    worker: str | None = Field(
        None,
        pattern=USER_NAME_PATTERN,
        description="For a worker-scope token: one of your workers by name (POST /v1/workers "
        "registers one). Left out: the issuing token's worker, else a new record at trust 0.",
    )

    def expires_at(self, now: datetime) -> datetime | None:
        """Absolute expiry for a token created at ``now``."""
        return now + timedelta(seconds=self.expires_in_s) if self.expires_in_s else None


class UserCreate(StrictBody):
    """Create a user (admin)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=USER_NAME_PATTERN,
        description="1-64 letters, digits and _ . @ -, starting with a letter or digit.",
    )


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
