"""run_worker against an in-test hub (a real WebSocket server) and the real bundled model."""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import inference.worker as worker_module
from inference.engine import EngineError, EngineEvent, LlamaEngine, bundled_model_path
from inference.protocol import (
    FEATURE_CHUNKS,
    PROTOCOL_VERSION,
    Cancel,
    Chunk,
    Chunks,
    Done,
    Error,
    ErrorCode,
    Frame,
    Heartbeat,
    Hello,
    Job,
    Leave,
    ModelInfo,
    SamplingParams,
    Welcome,
    encode,
    parse_frame,
)
from inference.worker import (
    WORKERS_WS_PATH,
    WorkerError,
    backoff_delay,
    detect_hardware,
    ready_together,
    run_worker,
    workers_ws_url,
)

MODEL = "smollm2"
LONG_TASK = "Count from 1 to 1000, separated by commas."


class Link:
    """The hub's end of one worker connection."""

    def __init__(self, websocket: ServerConnection) -> None:
        self.websocket = websocket
        self.path = websocket.request.path if websocket.request else ""

    async def receive(self) -> Frame:
        """The next frame from the worker, heartbeats skipped."""
        with anyio.fail_after(60):
            while True:
                frame = parse_frame(await self.websocket.recv())
                if not isinstance(frame, Heartbeat):
                    return frame

    async def receive_until(self, kind: type[Frame]) -> Frame:
        """Skip frames (chunks, usually) until one of ``kind`` arrives."""
        while not isinstance(frame := await self.receive(), kind):
            pass
        return frame

    async def send(self, frame: Frame) -> None:
        await self.websocket.send(encode(frame))

    async def welcome(
        self, heartbeat_interval_s: float = 30.0, features: list[str] | None = None
    ) -> Hello:
        hello = await self.receive()
        assert isinstance(hello, Hello)
        await self.send(
            Welcome(
                worker_id="w-1",
                heartbeat_interval_s=heartbeat_interval_s,
                protocol=PROTOCOL_VERSION,
                features=features,
            )
        )
        return hello


class FakeHub:
    """A WebSocket server that hands each worker connection to the test."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Link](10)
        self.url = ""

    async def handle(self, websocket: ServerConnection) -> None:
        await self._send.send(Link(websocket))
        await websocket.wait_closed()

    async def next_link(self) -> Link:
        with anyio.fail_after(30):
            return await self._receive.receive()


async def drain_until_closed(websocket: ServerConnection) -> None:
    """Read and drop frames until the worker closes the connection."""
    try:
        while True:
            await websocket.recv()
    except ConnectionClosed:
        return


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    """The bundled model, loaded once for the module."""
    engine = LlamaEngine(bundled_model_path(), n_ctx=2048, n_threads=2, model_id=MODEL)
    engine.load()
    yield engine
    engine.close()


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    fake = FakeHub()
    async with serve(fake.handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        fake.url = f"http://127.0.0.1:{port}"
        yield fake


def start_worker(tasks: TaskGroup, hub: FakeHub, engine: Any, **options: Any) -> None:
    options = {
        "worker_name": "test-worker",
        "hardware": "cpu",
        "slots": 1,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "rng": random.Random(0),
        **options,
    }
    tasks.start_soon(functools.partial(run_worker, hub.url, "iam_worker_token", engine, **options))


def make_job(content: str, job_id: str = "job-1", **fields: Any) -> Job:
    params = SamplingParams(temperature=0, seed=1, max_tokens=fields.pop("max_tokens", 24))
    return Job(
        job_id=job_id,
        model=fields.pop("model", MODEL),
        messages=[{"role": "user", "content": content}],
        params=params,
        deadline_s=fields.pop("deadline_s", 60),
        **fields,
    )


@pytest.mark.anyio
async def test_worker_says_hello_and_streams_a_job_as_chunks_then_done(
    hub: FakeHub, engine: LlamaEngine
) -> None:
    async with anyio.create_task_group() as tasks:
        start_worker(tasks, hub, engine, slots=1, version="9.9.9")
        link = await hub.next_link()
        hello = await link.welcome()
        assert link.path == WORKERS_WS_PATH
        assert hello.token == "iam_worker_token"
        assert hello.protocol == PROTOCOL_VERSION
        assert (hello.worker_name, hello.hardware, hello.slots) == ("test-worker", "cpu", 1)
        assert hello.version == "9.9.9"
        assert hello.models == [ModelInfo(id=MODEL, context_size=2048, supports_tools=True)]

        await link.send(make_job("Say hello in five words."))
        text = ""
        while isinstance(frame := await link.receive(), Chunk):
            assert frame.job_id == "job-1"
            text += frame.delta.content or ""
        assert isinstance(frame, Done)
        assert frame.job_id == "job-1"
        assert frame.model == MODEL
        assert frame.finish_reason == "stop"
        assert frame.usage.completion_tokens > 0
        assert text
        tasks.cancel_scope.cancel()


class AllAtOnceEngine:
    """The bundled model, its answer held back and then released in one go (like a fast upstream
    whose tokens arrive in one read)."""

    def __init__(self, engine: LlamaEngine) -> None:
        self._engine = engine

    def models(self) -> list[ModelInfo]:
        return self._engine.models()

    async def generate(self, job: Job) -> AsyncGenerator[EngineEvent, None]:
        events = [event async for event in self._engine.generate(job)]
        for event in events:
            yield event


@pytest.mark.anyio
@pytest.mark.parametrize("agreed", [True, False])
async def test_tokens_ready_together_go_in_one_chunks_frame_once_the_hub_agreed(
    hub: FakeHub, engine: LlamaEngine, agreed: bool
) -> None:
    async with anyio.create_task_group() as tasks:
        start_worker(tasks, hub, AllAtOnceEngine(engine))
        link = await hub.next_link()
        hello = await link.welcome(features=[FEATURE_CHUNKS] if agreed else None)
        assert hello.features == [FEATURE_CHUNKS]
        await link.send(make_job("Say hello in five words."))
        frames = []
        while not isinstance(frame := await link.receive(), Done):
            frames.append(frame)
        done = frame
        tasks.cancel_scope.cancel()
    pieces: list[str] = []
    for streamed in frames:
        if isinstance(streamed, Chunks):
            pieces += streamed.pieces
        else:
            assert isinstance(streamed, Chunk)
            pieces.append(streamed.delta.content or "")
    assert len(pieces) == done.usage.completion_tokens > 1
    assert "".join(pieces)
    if agreed:
        assert [type(f) for f in frames] == [Chunks]
    else:
        assert {type(f) for f in frames} == {Chunk}


async def _items(
    ready: list[int], gate: anyio.Event, later: list[int], closed: list[bool]
) -> AsyncGenerator[int, None]:
    try:
        for item in ready:
            yield item
        await gate.wait()
        for item in later:
            yield item
        if not later:
            raise EngineError(ErrorCode.UPSTREAM_ERROR, "upstream failed")
    finally:
        closed.append(True)


@pytest.mark.anyio
async def test_ready_together_yields_what_was_ready_as_one_list_in_order() -> None:
    gate, closed = anyio.Event(), list[bool]()
    batches: list[list[int]] = []
    async with aclosing(ready_together(_items([1, 2, 3], gate, [4, 5], closed))) as lists:
        async for batch in lists:
            batches.append(batch)
            gate.set()
    assert batches == [[1, 2, 3], [4, 5]]
    assert closed == [True]


@pytest.mark.anyio
async def test_ready_together_raises_the_engines_error_after_what_came_before_it() -> None:
    gate, closed = anyio.Event(), list[bool]()
    gate.set()
    batches: list[list[int]] = []

    async def relay() -> None:
        async with aclosing(ready_together(_items([1, 2], gate, [], closed))) as lists:
            async for batch in lists:
                batches.append(batch)

    with pytest.raises(EngineError) as caught:
        await relay()
    assert caught.value.code == ErrorCode.UPSTREAM_ERROR
    assert batches == [[1, 2]]
    assert closed == [True]


@pytest.mark.anyio
async def test_leaving_ready_together_early_closes_the_source() -> None:
    gate, closed = anyio.Event(), list[bool]()
    async with aclosing(ready_together(_items([1], gate, [2], closed))) as lists:
        async for batch in lists:
            assert batch == [1]
            break
    assert closed == [True]


@pytest.mark.anyio
async def test_a_cancel_stops_the_job_and_is_answered_with_a_cancelled_error(
    hub: FakeHub, engine: LlamaEngine
) -> None:
    async with anyio.create_task_group() as tasks:
        start_worker(tasks, hub, engine)
        link = await hub.next_link()
        await link.welcome()
        await link.send(make_job(LONG_TASK, max_tokens=1500))
        assert isinstance(await link.receive(), Chunk)
        await link.send(Cancel(job_id="job-1"))
        error = await link.receive_until(Error)
        assert isinstance(error, Error)
        assert (error.job_id, error.code) == ("job-1", ErrorCode.CANCELLED)
        # The slot is free again: the next job runs to its end.
        await link.send(make_job("Say hi.", job_id="job-2", max_tokens=4))
        done = await link.receive_until(Done)
        assert isinstance(done, Done)
        assert done.job_id == "job-2"
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_jobs_the_worker_cannot_take_are_refused_with_their_reason(
    hub: FakeHub, engine: LlamaEngine
) -> None:
    async with anyio.create_task_group() as tasks:
        start_worker(tasks, hub, engine, slots=1)
        link = await hub.next_link()
        await link.welcome()
        await link.send(make_job(LONG_TASK, job_id="long", max_tokens=1500))
        assert isinstance(await link.receive(), Chunk)

        refusals = {
            "long": ErrorCode.DUPLICATE_JOB,
            "extra": ErrorCode.SLOTS_FULL,
        }
        for job_id, code in refusals.items():
            await link.send(make_job("hi", job_id=job_id))
            error = await link.receive_until(Error)
            assert isinstance(error, Error)
            assert (error.job_id, error.code) == (job_id, code)
        await link.send(Cancel(job_id="long"))
        error = await link.receive_until(Error)
        assert isinstance(error, Error)
        assert error.code == ErrorCode.CANCELLED

        await link.send(make_job("hi", job_id="other-model", model="gpt-9"))
        error = await link.receive_until(Error)
        assert isinstance(error, Error)
        assert (error.job_id, error.code) == ("other-model", ErrorCode.UNKNOWN_MODEL)
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_job_past_its_deadline_ends_with_deadline_exceeded(
    hub: FakeHub, engine: LlamaEngine
) -> None:
    async with anyio.create_task_group() as tasks:
        start_worker(tasks, hub, engine)
        link = await hub.next_link()
        await link.welcome()
        await link.send(make_job(LONG_TASK, max_tokens=1500, deadline_s=0.2))
        error = await link.receive_until(Error)
        assert isinstance(error, Error)
        assert (error.job_id, error.code) == ("job-1", ErrorCode.DEADLINE_EXCEEDED)
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_engine_errors_and_worker_bugs_reach_the_hub_as_error_frames(
    hub: FakeHub, engine: LlamaEngine
) -> None:
    class BrokenEngine:
        def models(self) -> list[ModelInfo]:
            return engine.models()

        async def generate(self, job: Job) -> AsyncGenerator[EngineEvent, None]:
            if job.job_id == "bug":
                raise RuntimeError("a bug in the engine")
            async for event in engine.generate(job):
                yield event

    async with anyio.create_task_group() as tasks:
        start_worker(tasks, hub, BrokenEngine(), slots=2)
        link = await hub.next_link()
        await link.welcome()
        await link.send(make_job("word " * 3000, job_id="huge"))
        error = await link.receive()
        assert isinstance(error, Error)
        assert (error.job_id, error.code) == ("huge", ErrorCode.CONTEXT_LENGTH_EXCEEDED)
        await link.send(make_job("hi", job_id="bug"))
        error = await link.receive()
        assert isinstance(error, Error)
        assert (error.job_id, error.code) == ("bug", ErrorCode.INTERNAL_ERROR)
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_malformed_and_unexpected_hub_frames_get_an_error_and_the_link_stays(
    hub: FakeHub, engine: LlamaEngine
) -> None:
    async with anyio.create_task_group() as tasks:
        start_worker(tasks, hub, engine)
        link = await hub.next_link()
        await link.welcome()
        for text, code in [
            ("{not json", ErrorCode.MALFORMED_JSON),
            ('{"type": "reboot"}', ErrorCode.UNKNOWN_TYPE),
            ('{"type": "job", "job_id": "j"}', ErrorCode.INVALID_FRAME),
            (encode(Leave(reason="confused hub")), ErrorCode.UNEXPECTED_FRAME),
        ]:
            await link.websocket.send(text)
            error = await link.receive()
            assert isinstance(error, Error)
            assert error.code == code
        await link.send(make_job("Say hi.", max_tokens=4))
        assert isinstance(await link.receive_until(Done), Done)
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_worker_reconnects_and_says_hello_again_after_the_hub_drops_it(
    hub: FakeHub, engine: LlamaEngine
) -> None:
    async with anyio.create_task_group() as tasks:
        start_worker(tasks, hub, engine)
        first = await hub.next_link()
        await first.welcome()
        await first.websocket.close()
        second = await hub.next_link()
        hello = await second.welcome()
        assert hello.worker_name == "test-worker"
        await second.send(make_job("Say hi.", max_tokens=4))
        assert isinstance(await second.receive_until(Done), Done)
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_worker_heartbeats_and_drops_a_silent_hub_then_reconnects(
    hub: FakeHub, engine: LlamaEngine
) -> None:
    async with anyio.create_task_group() as tasks:
        start_worker(tasks, hub, engine, missed_heartbeats=3)
        silent = await hub.next_link()
        await silent.welcome(heartbeat_interval_s=0.05)
        with anyio.fail_after(30):
            frame = parse_frame(await silent.websocket.recv())
        assert isinstance(frame, Heartbeat)
        with anyio.fail_after(30):
            await drain_until_closed(silent.websocket)  # the hub never answers: the worker hangs up
        second = await hub.next_link()
        assert isinstance(await second.receive(), Hello)
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_worker_sends_leave_when_it_shuts_down(hub: FakeHub, engine: LlamaEngine) -> None:
    async with anyio.create_task_group() as tasks:
        start_worker(tasks, hub, engine)
        link = await hub.next_link()
        await link.welcome()
        tasks.cancel_scope.cancel()
    leave = await link.receive()
    assert leave == Leave(reason="shutdown")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (Error(code=ErrorCode.INVALID_TOKEN, message="unknown token"), ErrorCode.INVALID_TOKEN),
        (
            Welcome(worker_id="w", heartbeat_interval_s=5, protocol=PROTOCOL_VERSION + 1),
            ErrorCode.UNSUPPORTED_PROTOCOL,
        ),
    ],
)
async def test_a_refused_token_or_protocol_is_fatal_and_not_retried(
    hub: FakeHub, engine: LlamaEngine, refusal: Frame, code: str
) -> None:
    async def refuse() -> None:
        link = await hub.next_link()
        assert isinstance(await link.receive(), Hello)
        await link.send(refusal)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(refuse)
            with pytest.raises(WorkerError) as caught:
                await run_worker(
                    hub.url,
                    "bad-token",
                    engine,
                    worker_name="w",
                    hardware="cpu",
                    backoff_initial_s=0.01,
                )
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("hub_url", "expected"),
    [
        ("http://hub.example:8000", "ws://hub.example:8000/v1/workers/ws"),
        ("https://hub.example/", "wss://hub.example/v1/workers/ws"),
        ("https://hub.example/pool/", "wss://hub.example/pool/v1/workers/ws"),
        ("ws://127.0.0.1:9/v1/workers/ws", "ws://127.0.0.1:9/v1/workers/ws"),
    ],
)
def test_workers_ws_url_maps_any_hub_url_to_the_worker_endpoint(
    hub_url: str, expected: str
) -> None:
    assert workers_ws_url(hub_url) == expected


@pytest.mark.parametrize("hub_url", ["ftp://hub", "hub.example:8000", "http://"])
def test_workers_ws_url_rejects_what_is_not_a_hub_url(hub_url: str) -> None:
    with pytest.raises(ValueError, match="not a hub URL"):
        workers_ws_url(hub_url)


def test_backoff_delay_has_full_jitter_under_a_growing_capped_ceiling() -> None:
    rng = random.Random(42)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (10, 30.0), (5000, 30.0)]:
        delays = [backoff_delay(attempt, initial_s=0.5, cap_s=30.0, rng=rng) for _ in range(200)]
        assert all(0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling / 2
        assert min(delays) < ceiling / 2


def test_detect_hardware_follows_llama_cpp_gpu_offload_support() -> None:
    import llama_cpp

    expected = "gpu" if llama_cpp.llama_supports_gpu_offload() else "cpu"
    assert detect_hardware() == expected


@pytest.mark.anyio
async def test_an_engine_slow_to_stop_delays_the_job_end_by_a_bound_only(
    monkeypatch: pytest.MonkeyPatch, captured_logs: list[Any]
) -> None:
    monkeypatch.setattr(worker_module, "_CLOSE_WAIT_S", 0.1)
    release, stopped = anyio.Event(), list[bool]()

    async def stubborn() -> AsyncGenerator[int, None]:
        try:
            yield 1
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):  # one long step that cannot be interrupted
                await release.wait()
            stopped.append(True)

    async with aclosing(ready_together(stubborn())) as lists:
        async for batch in lists:
            assert batch == [1]
            break
    assert [e["event"] for e in captured_logs if e["event"] == "engine_slow_to_stop"] == [
        "engine_slow_to_stop"
    ]
    release.set()
    with anyio.fail_after(5):
        while True:
            if stopped:
                break
            await anyio.sleep(0.01)
