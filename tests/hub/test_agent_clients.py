"""The shape of a real agent client against a live hub and a real worker on the bundled model.

Agent clients (OpenCode, aider, Claude Code…) send a system prompt of several thousand tokens and
fire two requests at once: the answer and a short title for the session. On a one-slot worker the
second waits behind the first; both must come back as real answers — no 502 from a context too
small for the prompt, no "[iamine: degraded answer]" for the one that waited.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from inference.settings import InferenceSettings
from tests.hub.conftest import BUNDLED_MODEL, LiveHub

# About 4,600 tokens of the bundled model's tokenizer: an agent client's system prompt, past 4,096.
AGENT_PROMPT = " ".join(
    f"Rule {i}: when the user asks about file number {i}, read it with the read tool, quote at "
    f"most {i % 7 + 3} lines, and never invent paths or commands you have not seen."
    for i in range(110)
)


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """A 6k-token prompt on one CPU thread takes a while before its first token."""
    return {
        "inference": InferenceSettings(
            local_worker=False, heartbeat_interval_s=1, first_token_timeout_s=240
        )
    }


def test_a_long_system_prompt_and_a_concurrent_title_request_both_get_real_answers(
    live_hub: LiveHub, real_worker: None
) -> None:
    client = openai.OpenAI(
        base_url=f"{live_hub.url}/v1", api_key=live_hub.user_token, max_retries=0, timeout=600
    )

    def ask(messages: list[dict[str, str]]) -> Any:
        return client.chat.completions.with_raw_response.create(
            model=BUNDLED_MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
        )

    with ThreadPoolExecutor(2) as pool:
        answer = pool.submit(
            ask,
            [
                {"role": "system", "content": AGENT_PROMPT},
                {"role": "user", "content": "Which file should I read first?"},
            ],
        )
        title = pool.submit(
            ask,
            [
                {"role": "system", "content": "Write a title of at most five words."},
                {"role": "user", "content": "Which file should I read first?"},
            ],
        )
        responses = [answer.result(), title.result()]
    routes = sorted(r.headers["x-iamine-route"] for r in responses)
    assert routes in (["direct", "queued"], ["direct", "direct"])
    for raw in responses:
        completion = raw.parse()
        text = completion.choices[0].message.content or ""
        assert "[iamine: degraded answer]" not in text
        assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert responses[0].parse().usage.prompt_tokens > 4096  # more than the old default context
