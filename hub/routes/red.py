"""The RED daemon's reports and playbook (admin token)."""

from __future__ import annotations

from typing import Annotated, Any, Self

from fastapi import APIRouter, Query
from pydantic import ConfigDict, Field, model_validator

from hub.deps import AdminPrincipal, State
from hub.errors import NotFoundError
from hub.schemas import StrictBody
from inference.red import (
    PlaybookVersion,
    current_playbook,
    list_reports,
    playbook_versions,
    rollback_playbook,
    write_playbook,
)

router = APIRouter(prefix="/admin/api/red", tags=["admin"])


class PlaybookChange(StrictBody):
    """Either roll the playbook back to an older version, or set its text."""

    model_config = ConfigDict(extra="forbid")

    rollback_to: int | None = Field(
        None, ge=1, le=2**63 - 1, description="Version whose text becomes current (a bigint)."
    )
    text: str | None = Field(None, max_length=20_000, description="New playbook text.")

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.rollback_to is None) == (self.text is None):
            raise ValueError("give exactly one of 'rollback_to' and 'text'")
        return self


def _version(v: PlaybookVersion, with_text: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": v.version,
        "source": v.source,
        "report_id": v.report_id,
        "created_at": v.created_at.isoformat(),
    }
    if with_text:
        body["text"] = v.text
    return body


@router.get("/reports")
async def get_reports(
    state: State, _: AdminPrincipal, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> dict[str, Any]:
    """RED's newest reports: state seen, the model's answer, each action's verdict and reason."""
    async with state.db.pool.acquire() as conn:
        reports = await list_reports(conn, limit)
    return {"object": "list", "data": reports}


@router.get("/playbook")
async def get_playbook(
    state: State, _: AdminPrincipal, limit: Annotated[int, Query(ge=1, le=500)] = 20
) -> dict[str, Any]:
    """The playbook in force and its newest versions (with their text)."""
    async with state.db.pool.acquire() as conn:
        current = await current_playbook(conn)
        versions = await playbook_versions(conn, limit)
    return {
        "current": _version(current) if current else None,
        "versions": [_version(v) for v in versions],
    }


@router.post("/playbook")
async def change_playbook(body: PlaybookChange, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Roll back to a version or set the text; either way a new version becomes current."""
    async with state.db.pool.acquire() as conn:
        if body.rollback_to is not None:
            version = await rollback_playbook(conn, body.rollback_to)
            if version is None:
                raise NotFoundError(
                    f"The playbook has no version {body.rollback_to}.", param="rollback_to"
                )
        else:
            assert body.text is not None
            version = await write_playbook(conn, body.text, "admin")
    return _version(version)
