"""The caller's agent preferences (``/v1/preferences``): auto-review on or off."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import ConfigDict, Field, StrictBool

from hub.deps import State, UserCallerDep
from hub.preferences import Preferences, load_preferences, save_preferences
from hub.schemas import StrictBody

router = APIRouter(prefix="/v1", tags=["agents"])


class PreferencesBody(StrictBody):
    """The caller's preferences."""

    model_config = ConfigDict(extra="forbid")

    auto_review: StrictBool = Field(
        description="Have the reviewer role critique every chat answer (see docs/agents.md)."
    )


@router.get("/preferences")
async def read_preferences(state: State, caller: UserCallerDep) -> PreferencesBody:
    """The caller's preferences (auto-review is off until turned on)."""
    async with state.db.pool.acquire() as conn:
        preferences = await load_preferences(conn, caller.user_id)
    return PreferencesBody(auto_review=preferences.auto_review)


@router.put("/preferences")
async def write_preferences(
    body: PreferencesBody, state: State, caller: UserCallerDep
) -> PreferencesBody:
    """Replace the caller's preferences."""
    async with state.db.pool.acquire() as conn:
        await save_preferences(conn, caller.user_id, Preferences(auto_review=body.auto_review))
    return body
