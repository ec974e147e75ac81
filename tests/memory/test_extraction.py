"""Fact extraction: strict JSON from the model, graceful on anything else, dedup on repeats."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import asyncpg
import pytest
from pgvector.asyncpg import register_vector

from memory.embeddings import Embedder
from memory.extraction import (
    EXTRACTION_INSTRUCTIONS,
    ExtractionOutcome,
    ExtractionRejected,
    ExtractionRequest,
    ExtractionUnavailable,
    Extractor,
    FactMiner,
    extract_facts,
    extraction_prompt,
    parse_extraction,
)
from memory.keys import KeyIssue, issue_key
from memory.l2 import Preferences, save_preferences
from memory.settings import MemorySettings
from tests.memory.conftest import Member, new_token

pytestmark = pytest.mark.anyio

EXCHANGE = [
    {"role": "user", "content": "I just moved to Lyon and I am allergic to peanuts."},
    {"role": "assistant", "content": "Welcome to Lyon! I'll keep the peanut allergy in mind."},
]
GOOD = (
    '{"facts": [{"text": "The user lives in Lyon.", "key": "home_city", "tags": ["location"], '
    '"confidence": 0.9}, {"text": "The user is allergic to peanuts.", "tags": ["health"]}]}'
)
MALFORMED = [
    "Sure! The user lives in Lyon and is allergic to peanuts.",
    '{"facts": [{"text": "The user lives in Lyon."}',
    '{"facts": "The user lives in Lyon."}',
    '[{"text": "The user lives in Lyon."}]',
    '{"facts": [], "note": "nothing else"}',
    '{"facts": [{"text": "The user lives in Lyon.", "confidence": 2}]}',
    '{"facts": [{"text": "The user lives in Lyon.", "confidence": NaN}]}',
    '{"facts": [{"text": "The user lives in Lyon.", "tags": ["Not A Tag"]}]}',
    '{"facts": [{"text": "The user lives in Lyon.", "key": "Home City"}]}',
    '{"facts": [{"text": 42}]}',
    '{"facts": [{"text": "ok"}]}',
    "",
]


def settings(**fields: Any) -> MemorySettings:
    return MemorySettings(**fields)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's database with pgvector's codec, as the hub has."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2, init=register_vector) as p:
        yield p


def answering(text: str) -> Extractor:
    async def extract(messages: list[dict[str, Any]]) -> str:
        return text

    return extract


def request_for(member: Member) -> ExtractionRequest:
    return ExtractionRequest(
        member.user_id, member.token.id, member.token.text, "conv-1", list(EXCHANGE)
    )


async def fact_count(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM facts"))


def test_the_prompt_asks_for_json_and_quotes_the_exchange() -> None:
    system, user = extraction_prompt(EXCHANGE)
    assert system == {"role": "system", "content": EXTRACTION_INSTRUCTIONS}
    assert "user: I just moved to Lyon" in user["content"]
    assert "assistant: Welcome to Lyon!" in user["content"]


def test_a_valid_answer_parses_with_or_without_a_code_fence() -> None:
    facts = parse_extraction(GOOD)
    assert [f.text for f in facts] == [
        "The user lives in Lyon.",
        "The user is allergic to peanuts.",
    ]
    assert facts[0].key == "home_city" and facts[1].confidence == 0.7
    assert parse_extraction(f"```json\n{GOOD}\n```") == facts
    assert parse_extraction(' {"facts": []} ') == []


@pytest.mark.parametrize("answer", MALFORMED)
def test_anything_but_the_exact_json_shape_is_rejected(answer: str) -> None:
    with pytest.raises(ExtractionRejected):
        parse_extraction(answer)


@pytest.mark.parametrize("answer", MALFORMED[:4])
async def test_malformed_model_output_stores_nothing_and_logs_why_without_the_text(
    pool: asyncpg.Pool,
    embedder: Embedder,
    alice: Member,
    answer: str,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    result = await extract_facts(pool, embedder, request_for(alice), settings(), answering(answer))
    assert result.outcome is ExtractionOutcome.REJECTED and result.created == []
    assert await fact_count(pool) == 0
    [entry] = [e for e in captured_logs if e["event"] == "fact_extraction_rejected"]
    assert "Lyon" not in str(entry) and entry["chars"] == len(answer)


async def test_valid_facts_are_stored_encrypted_and_a_repeat_is_deduplicated(
    pool: asyncpg.Pool, embedder: Embedder, alice: Member
) -> None:
    first = await extract_facts(pool, embedder, request_for(alice), settings(), answering(GOOD))
    assert first.outcome is ExtractionOutcome.STORED and len(first.created) == 2
    again = await extract_facts(pool, embedder, request_for(alice), settings(), answering(GOOD))
    assert again.created == [] and sorted(again.duplicates) == sorted(first.created)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT source, source_conversation, ciphertext FROM facts")
    assert {(r["source"], r["source_conversation"]) for r in rows} == {("extracted", "conv-1")}
    assert all(b"Lyon" not in bytes(r["ciphertext"]) for r in rows)


async def test_a_valid_empty_answer_stores_nothing(
    pool: asyncpg.Pool, embedder: Embedder, alice: Member
) -> None:
    result = await extract_facts(
        pool, embedder, request_for(alice), settings(), answering('{"facts": []}')
    )
    assert result.outcome is ExtractionOutcome.NOTHING


async def test_no_worker_or_a_slow_model_means_no_facts_not_an_error(
    pool: asyncpg.Pool, embedder: Embedder, alice: Member
) -> None:
    async def unavailable(messages: list[dict[str, Any]]) -> str:
        raise ExtractionUnavailable("no worker serves the model")

    never = asyncio.Event()

    async def stuck(messages: list[dict[str, Any]]) -> str:
        await never.wait()
        return GOOD

    for extract, limit in ((unavailable, 60.0), (stuck, 0.05)):
        quick = settings(facts_extraction_timeout_s=limit)
        result = await extract_facts(pool, embedder, request_for(alice), quick, extract)
        assert result.outcome is ExtractionOutcome.UNAVAILABLE
    assert await fact_count(pool) == 0


async def test_a_user_who_turned_memory_off_or_a_locked_token_is_not_mined(
    pool: asyncpg.Pool, embedder: Embedder, alice: Member
) -> None:
    calls: list[int] = []

    async def counting(messages: list[dict[str, Any]]) -> str:
        calls.append(1)
        return GOOD

    async with pool.acquire() as conn:
        locked = await new_token(conn, alice.user_id, wrap=False)
        assert await issue_key(conn, alice.user_id, locked.id, locked.text, ("user",)) == (
            KeyIssue.LOCKED
        )
    locked_request = ExtractionRequest(alice.user_id, locked.id, locked.text, "c", list(EXCHANGE))
    result = await extract_facts(pool, embedder, locked_request, settings(), counting)
    assert result.outcome is ExtractionOutcome.LOCKED
    async with pool.acquire() as conn:
        await save_preferences(conn, alice.user_id, Preferences(enabled=False))
    result = await extract_facts(pool, embedder, request_for(alice), settings(), counting)
    assert result.outcome is ExtractionOutcome.DISABLED and calls == []


async def test_the_miner_queue_is_bounded_and_runs_requests(
    pool: asyncpg.Pool, embedder: Embedder, alice: Member
) -> None:
    miner = FactMiner(pool, embedder, settings(facts_extraction_queue_size=1), answering(GOOD))
    assert miner.submit(request_for(alice)) and not miner.submit(request_for(alice))
    assert miner.pending == 1
    result = await miner.run_one(request_for(alice))
    assert result is not None and result.outcome is ExtractionOutcome.STORED
    assert await fact_count(pool) == 2
