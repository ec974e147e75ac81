"""The OpenAI-compatible API: ``/v1/models`` and ``/v1/chat/completions`` (JSON or SSE).

Thin over ``hub/chat.py``, which owns what a chat does (recall, checks, the job, bookkeeping).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from federation.client import utc_now
from hub.chat import CONVERSATION_HEADER, ChatCaller, collect, request_messages, start_chat
from hub.deps import State, UserPrincipal, bearer_token, current_principal
from hub.errors import InvalidRequestError, ModelNotFoundError
from hub.openai_schema import ChatCompletionRequest, completion_body, completion_id
from hub.relay import SSEResponse, sse_events
from hub.review import AutoReview, last_user_text
from hub.state import HubState
from inference.placement import ModelSummary
from memory.conversations import is_valid_conversation_id, new_conversation_id

router = APIRouter(prefix="/v1", tags=["openai"])


def _model_object(model: ModelSummary) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": 0,
        "owned_by": "iamine-pool",
        "context_length": model.context_size,
        "supports_tools": model.supports_tools,
        "workers": model.workers,
        "free_slots": model.free_slots,
    }


def _peer_models(state: HubState, local: set[str]) -> list[dict[str, Any]]:
    """Models only live peer pools offer (chats for them overflow there), OpenAI's shape."""
    federation = state.federation
    if federation is None or not federation.settings.overflow.enabled:
        return []
    book, now = federation.capabilities, utc_now()
    return [
        {
            "id": model,
            "object": "model",
            "created": 0,
            "owned_by": "iamine-peer",
            "context_length": None,
            "supports_tools": False,
            "workers": 0,
            "free_slots": sum(offer.free_slots for offer in book.offers(model, now)),
        }
        for model in sorted(book.models(now) - local)
    ]


@router.get("/models")
async def list_models(state: State, _: UserPrincipal) -> dict[str, Any]:
    """Models served by connected workers (and those seen lately, with 0 workers), OpenAI's shape.

    A model whose workers just left stays listed for ``model_memory_s``: its requests queue
    for a worker to return instead of failing. A model only peer pools offer is listed too
    (``owned_by: iamine-peer``): its chats are forwarded to them.
    """
    local = [_model_object(m) for m in state.workers.models()]
    return {"object": "list", "data": local + _peer_models(state, {m["id"] for m in local})}


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, state: State, _: UserPrincipal) -> dict[str, Any]:
    """One model of ``/v1/models`` (OpenAI's retrieve), or 404 ``model_not_found``."""
    model = state.workers.model(model_id)
    if model is not None:
        return _model_object(model)
    for offered in _peer_models(state, set()):
        if offered["id"] == model_id:
            return offered
    raise ModelNotFoundError(f"The model '{model_id}' does not exist in this pool.")


def _conversation_id(request: Request, body: ChatCompletionRequest) -> str:
    given = request.headers.get(CONVERSATION_HEADER) or (body.metadata or {}).get("conversation_id")
    if given is None:
        return new_conversation_id()
    if not is_valid_conversation_id(given):
        raise InvalidRequestError(
            "Conversation ids are 1-128 letters, digits and . _ : -.", param="conversation_id"
        )
    return given


def chat_request(raw: bytes) -> ChatCompletionRequest:
    """The request body, parsed and validated in one pass (pydantic's JSON parser).

    Errors are FastAPI's own ``RequestValidationError``, located in the body, so the hub's one
    error handler answers them exactly as for any other route.
    """
    try:
        return ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` written in place of their references.

    An OpenAPI document resolves ``#/$defs/...`` from its own root, where a schema placed by
    ``openapi_extra`` has no definitions; the chat request's models are not recursive.
    """
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                return resolve(definitions[reference.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_CHAT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": inlined(ChatCompletionRequest.model_json_schema())}},
}


@router.post("/chat/completions", response_model=None, openapi_extra={"requestBody": _CHAT_BODY})
async def chat_completions(request: Request) -> Response:
    """Answer a chat on a pool worker, as JSON or as an SSE stream of chunks.

    The hot path resolves its caller and body itself, in the order FastAPI would (the token
    first, then the body), rather than through dependency injection: that machinery was 7 % of
    the hub's CPU at 50 clients (bench/README.md).
    """
    state: HubState = request.state.hub
    principal = await current_principal(request, state)
    principal.require("user")
    body = chat_request(await request.body())
    caller = ChatCaller(principal, bearer_token(request), _conversation_id(request, body))
    question = last_user_text(request_messages(body))
    review = await AutoReview.for_request(state, request, principal, question)
    run = await start_chat(state, caller, body, review)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        sse = sse_events(run.events, body.model, include_usage)
        return SSEResponse(run.review.around(sse) if run.review else sse, headers=run.headers)
    answer, done = await collect(run)
    completion = completion_body(completion_id(), body.model, answer, done)
    if run.review is not None and (reviewed := await run.review.result()) is not None:
        completion["iamine_review"] = reviewed
    return Response(orjson.dumps(completion), media_type="application/json", headers=run.headers)
