"""Fact extraction on the real bundled model: a chat with memory on leaves a stored fact.

The hub of this module runs extraction (the other live hubs turn it off) on a real worker
serving SmolLM2-135M; the extractor's answer is constrained by the JSON schema
(``memory.extraction.EXTRACTION_FORMAT``), so even this small model writes the shape asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.settings import InferenceSettings
from memory.settings import MemorySettings
from tests.hub.conftest import BUNDLED_MODEL, LiveHub, wait_until

EXTRACTION_WAIT_S = 240  # a deadline for the background job on 2 shared cores, not a timing claim


@pytest.fixture(scope="module")
def hub_overrides(embedding_model_dir: Path) -> dict[str, Any]:
    """Extraction on, by the bundled model."""
    return {
        "inference": InferenceSettings(
            local_worker=False, heartbeat_interval_s=1, first_token_timeout_s=30
        ),
        "memory": MemorySettings(
            embedding_model_dir=embedding_model_dir,
            facts_extraction=True,
            facts_extraction_model=BUNDLED_MODEL,
        ),
    }


def test_a_chat_with_memory_on_stores_a_fact_from_an_obvious_statement(
    live_hub: LiveHub, real_worker: None
) -> None:
    headers = {"Authorization": f"Bearer {live_hub.user_token}"}
    with httpx.Client(base_url=live_hub.url, headers=headers, timeout=120) as client:
        on = client.put("/v1/memory/settings", json={"enabled": True, "compaction": False})
        assert on.is_success, on.text
        chat = client.post(
            "/v1/chat/completions",
            json={
                "model": BUNDLED_MODEL,
                "messages": [
                    {"role": "user", "content": "My name is Ana and I live in Lyon, France."}
                ],
                "max_tokens": 24,
            },
        )
        assert chat.status_code == 200, chat.text
        facts: list[dict[str, Any]] = []

        def extracted() -> bool:
            listed = client.get("/v1/memory/facts")
            assert listed.status_code == 200, listed.text
            facts[:] = listed.json()["data"]
            return bool(facts)

        wait_until(extracted, EXTRACTION_WAIT_S, "a fact extracted from the exchange")
    assert all(f["source"] == "extracted" and f["text"] for f in facts)
