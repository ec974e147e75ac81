"""Settings of memory (L1 retention, L2 compaction, L3/L4 recall), set as ``IAMINE_MEMORY__*``.

The hub reads them once in ``hub/config.py`` and hands this model to the memory functions; the
per-user opt-in (``enabled``, ``compaction``) is not a setting but a row each user controls.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

BUNDLED_MODEL_ID = "smollm2-135m-instruct"


class MemorySettings(BaseModel):
    """L1 raw-message retention, L2 compaction, and L3/L4 semantic memory and recall."""

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
    facts_owner_index_min: int = Field(
        10_000,
        ge=1,
        description="Facts a user needs for an HNSW index of their own (job fact_indexes); "
        "the index is dropped when the user falls under half of it.",
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
    # Semantic memory (L3 facts, L4 notes, recall into chats): issue #6.
    embedding_model_dir: Path | None = Field(
        None,
        description=(
            "Folder of the embedding model, prepared by `iamine models install` (default: "
            "`<data_dir>/models/all-minilm-l6-v2`)."
        ),
    )
    embedding_threads: int = Field(
        2,
        ge=1,
        description="Embedding sessions run side by side, one CPU thread each (a call's batches "
        "are spread over them).",
    )
    embedding_batch_size: int = Field(32, ge=1, le=1024, description="Texts per embedding batch.")
    embedding_int8: bool = Field(
        True,
        description="Multiply the embedding model's weights by activations quantized to 8 bits "
        "per token (memory/onnx_int8.py): about 2.2 times the texts per CPU second, vectors at "
        "cosine 0.997 to the float32 ones (recall@1 about 1 point lower); false runs float32.",
    )
    recall_min_score: float = Field(
        0.25,
        ge=-1,
        le=1,
        description="Cosine similarity a fact or note needs to be injected into a chat.",
    )
    recall_budget_tokens: int = Field(
        400, ge=0, description="Estimated tokens of recalled memory injected into one chat."
    )
    recall_candidates: int = Field(
        8, ge=1, le=100, description="Facts and notes (each) considered for a chat's recall."
    )
    recall_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        description=(
            "Seconds the chat path caches a user's memory opt-in (recall; the L2 write of a "
            "user with memory off is not queued); a change through this hub's API applies at "
            "once, one made through another hub process within this bound."
        ),
    )
    facts_dedup_similarity: float = Field(
        0.9, ge=0, le=1, description="Cosine similarity from which a new fact may be a duplicate."
    )
    facts_dedup_overlap: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Word overlap (Jaccard) that, with the similarity, makes a fact a duplicate.",
    )
    facts_supersede_similarity: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Cosine similarity from which a newer fact with the same wording but another value "
            "closes the older one."
        ),
    )
    facts_extraction: bool = Field(
        True,
        description="Ask a pool model for facts after each exchange of users with memory on.",
    )
    facts_extraction_model: str = Field(
        BUNDLED_MODEL_ID, min_length=1, description="Pool model that extracts facts."
    )
    facts_extraction_tokens: int = Field(
        256, ge=16, description="Most tokens of the extraction model's answer."
    )
    facts_extraction_timeout_s: float = Field(
        60.0, gt=0, description="Seconds one extraction may take before it is dropped."
    )
    facts_extraction_queue_size: int = Field(
        256, ge=1, description="Extractions waiting to run; further exchanges are not mined."
    )
    notes_default_write_rule: str = Field(
        "members",
        pattern="^(members|owner)$",
        description=(
            "Write rule of a new `pool:`/`fed:` namespace when its creator names none: "
            "`members` (every subscriber writes) or `owner` (only its owning user)."
        ),
    )
