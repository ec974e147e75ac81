"""Settings of conversation memory (L1 retention, L2 compaction), set as ``IAMINE_MEMORY__*``.

The hub reads them once in ``hub/config.py`` and hands this model to the memory functions; the
per-user opt-in (``enabled``, ``compaction``) is not a setting but a row each user controls.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

BUNDLED_MODEL_ID = "smollm2-135m-instruct"


class MemorySettings(BaseModel):
    """L1 raw-message retention and L2 compaction."""

    l1_enabled: bool = Field(
        True,
        description=(
            "Keep every chat message as raw JSON in L1 (plaintext) until its TTL; `false` keeps "
            "nothing in L1."
        ),
    )
    l1_ttl_s: int = Field(
        86_400, ge=1, description="Seconds an L1 message is kept before it is purged."
    )
    l1_purge_batch: int = Field(
        5_000, ge=1, description="Rows deleted per statement when purging expired L1 messages."
    )
    compaction_budget_tokens: int = Field(
        3_000,
        ge=64,
        description=(
            "Estimated tokens of a conversation's live context (newest summary plus the turns "
            "after it) past which older turns are summarised, for users who turned compaction on."
        ),
    )
    compaction_keep_turns: int = Field(
        4, ge=1, description="Newest turns of a conversation that compaction never summarises."
    )
    compaction_keep_originals: bool = Field(
        True,
        description=(
            "Keep summarised turns (encrypted) after compaction; `false` deletes them once their "
            "summary is stored."
        ),
    )
    compaction_model: str = Field(
        BUNDLED_MODEL_ID, min_length=1, description="Pool model that writes compaction summaries."
    )
    compaction_summary_tokens: int = Field(
        256, ge=16, description="Most tokens a compaction summary may have."
    )
    compaction_timeout_s: float = Field(
        120.0,
        gt=0,
        description=(
            "Seconds a summary may take; past it, or with no worker for the model, compaction is "
            "skipped and tried again after the conversation's next turn."
        ),
    )
    compaction_queue_size: int = Field(
        256, ge=1, description="Compactions waiting to run; further requests wait for a next turn."
    )
