"""What a request needs of a model's context, judged by the hub before any worker sees it.

The hub has no tokenizer (workers bring the models), so it counts bytes. No vocabulary the pool
serves packs more than :data:`BYTES_PER_TOKEN` bytes of text into one token on average (BPE
vocabularies average 3-4.5 bytes per token on prose, fewer on code and non-Latin scripts), so
``bytes / BYTES_PER_TOKEN`` is a count the real one does not fall below: a prompt over the context
by that count is over it by any tokenizer's, and is refused with ``context_length_exceeded`` before
dispatch. A prompt that only the worker's exact count finds too long gets the same 400 from the
worker's answer, with no output generated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

BYTES_PER_TOKEN = 6


def prompt_tokens_floor(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
) -> int:
    """A lower bound of the prompt's token count: its text bytes over :data:`BYTES_PER_TOKEN`."""
    size = sum(_text_bytes(message) for message in messages)
    if tools:
        size += len(json.dumps(list(tools), ensure_ascii=False).encode())
    return size // BYTES_PER_TOKEN


def _text_bytes(value: object) -> int:
    """UTF-8 bytes of every string inside a message (content parts, tool calls, names)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, dict):
        return sum(_text_bytes(item) for item in value.values())
    if isinstance(value, list):
        return sum(_text_bytes(item) for item in value)
    return 0
