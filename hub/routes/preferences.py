"""The caller's preferences (``/v1/preferences``): auto-review, the least worker trust, overflow."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import ConfigDict, Field, StrictBool, StrictInt

from hub.deps import State, UserCallerDep
from hub.preferences import Preferences
from hub.schemas import StrictBody

router = APIRouter(prefix="/v1", tags=["agents"])


class PreferencesBody(StrictBody):
    """The caller's preferences."""

    model_config = ConfigDict(extra="forbid")

    auto_review: StrictBool = Field(
        description="Have the reviewer role critique every chat answer (see docs/agents.md)."
    )
    min_trust: StrictInt = Field(
        0,
        ge=0,
        le=3,
        description="The least trust level (0–3, docs/trust.md) of a worker your chats may run "
        "on; the pool's own minimum applies when it is higher. Left out: 0.",
    )
    federation_chat: StrictBool = Field(
        True,
        description="A chat this pool cannot serve soon may be served by a peer pool "
        "(docs/federation.md, Overflow). Left out: true.",
    )
    federation_memory: StrictBool = Field(
        False,
        description="Recalled memory and your identity travel with a chat served by a peer "
        "pool. Left out: false.",
    )


@router.get("/preferences")
async def read_preferences(state: State, caller: UserCallerDep) -> PreferencesBody:
    """The caller's preferences (auto-review is off until turned on)."""
    preferences = await state.preferences.get(caller.user_id)
    return PreferencesBody(
        auto_review=preferences.auto_review,
        min_trust=preferences.min_trust,
        federation_chat=preferences.federation_chat,
        federation_memory=preferences.federation_memory,
    )


@router.put("/preferences")
async def write_preferences(
    body: PreferencesBody, state: State, caller: UserCallerDep
) -> PreferencesBody:
    """Replace the caller's preferences."""
    wanted = Preferences(
        auto_review=body.auto_review,
        min_trust=body.min_trust,
        federation_chat=body.federation_chat,
        federation_memory=body.federation_memory,
    )
    await state.preferences.save(caller.user_id, wanted)
    return body
