"""Worker registry: eligibility, transactional placement, charges, output bounds, memory."""

from __future__ import annotations

import uuid

import pytest

from inference.link import JobHandle, OutputLimitExceeded, WorkerLink
from inference.protocol import (
    Chunk,
    Delta,
    Done,
    Error,
    Frame,
    InferenceError,
    Job,
    ModelInfo,
    SamplingParams,
    Usage,
)
from inference.registry import WorkerRegistry
from inference.settings import InferenceSettings


async def _ignore(frame: Frame) -> None:
    return None


def link(
    registry: WorkerRegistry, name: str, tools: bool = True, *, joined: bool = True
) -> WorkerLink:
    """A worker of model ``m`` (``joined``: already in the registry; else the test adds it)."""
    worker = WorkerLink(
        id=name,
        name=name,
        owner_id=None,
        models={"m": ModelInfo(id="m", context_size=512, supports_tools=tools)},
        hardware="cpu",
        slots=1,
        send=_ignore,
    )
    if joined:
        registry.workers[worker.id] = worker
    return worker


def ids(workers: list[WorkerLink]) -> set[str]:
    return {w.id for w in workers}


def test_a_worker_that_failed_the_tool_check_gets_no_tool_requests() -> None:
    registry = WorkerRegistry(InferenceSettings())
    good, bad = link(registry, "good"), link(registry, "bad")
    bad.tools_ok = False
    good.tools_ok = True
    assert ids(registry.eligible("m", needs_tools=True, avoid=frozenset())) == {"good"}
    assert ids(registry.eligible("m", needs_tools=False, avoid=frozenset())) == {"good", "bad"}


def test_an_unchecked_worker_that_announces_tools_still_gets_tool_requests() -> None:
    registry = WorkerRegistry(InferenceSettings())
    link(registry, "fresh")
    link(registry, "plain", tools=False)
    assert ids(registry.eligible("m", needs_tools=True, avoid=frozenset())) == {"fresh"}


def test_a_pinned_job_is_eligible_only_on_its_worker() -> None:
    registry = WorkerRegistry(InferenceSettings())
    link(registry, "a")
    link(registry, "b")
    assert ids(registry.eligible("m", needs_tools=False, avoid=frozenset(), only="b")) == {"b"}


def test_a_readmitted_worker_is_eligible_again() -> None:
    registry = WorkerRegistry(InferenceSettings())
    worker = link(registry, "a")
    registry.exclude(worker, "checker_failed", "three failures")
    assert registry.eligible("m", needs_tools=False, avoid=frozenset()) == []
    registry.readmit(worker)
    assert ids(registry.eligible("m", needs_tools=False, avoid=frozenset())) == {"a"}


def job(model: str = "m", max_tokens: int | None = 100) -> Job:
    return Job(
        job_id=uuid.uuid4().hex,
        model=model,
        messages=[{"role": "user", "content": "x"}],
        params=SamplingParams(max_tokens=max_tokens),
        deadline_s=30,
    )


def chunk(handle: JobHandle, text: str = "tok") -> Chunk:
    return Chunk(job_id=handle.job.job_id, delta=Delta(content=text))


@pytest.mark.anyio
async def test_a_job_whose_send_fails_unexpectedly_frees_its_slot() -> None:
    registry = WorkerRegistry(InferenceSettings())
    worker = link(registry, "a")

    async def explode(frame: Frame) -> None:
        raise ValueError("a bug between attach and start")

    worker.send = explode
    with pytest.raises(ValueError, match="a bug"):
        await registry.place(job(), needs_tools=False, user="u")
    assert worker.jobs == {}
    assert worker.free_slots == 1


@pytest.mark.anyio
async def test_a_huge_usage_report_does_not_break_the_router() -> None:
    registry = WorkerRegistry(InferenceSettings())
    worker = link(registry, "a")
    handle = await registry.place(job(), needs_tools=False, user="u")
    assert handle is not None
    registry.router.charge(worker.id, 10**400)
    assert registry.router.served_share(worker.id) == 1.0


@pytest.mark.anyio
async def test_a_failed_job_is_charged_its_real_output_not_its_max_tokens() -> None:
    registry = WorkerRegistry(InferenceSettings())
    failing, other = link(registry, "failing"), link(registry, "other")
    handle = await registry.place(job(max_tokens=100), needs_tools=False, user="u", only="failing")
    assert handle is not None
    for _ in range(3):
        await registry.deliver(failing, chunk(handle))
    await registry.deliver(
        failing, Error(job_id=handle.job.job_id, code="engine_error", message="boom")
    )
    second = await registry.place(job(max_tokens=10), needs_tools=False, user="u", only="other")
    assert second is not None
    await registry.cancel(second)
    await registry.deliver(other, Error(job_id=second.job.job_id, code="cancelled", message="ok"))
    # 3 tokens really came from the failed job, none from the cancelled one.
    assert registry.router.served_share(failing.id) == pytest.approx(1.0)
    assert registry.router.served_share(other.id) == 0.0


@pytest.mark.anyio
async def test_a_worker_streaming_past_its_jobs_budget_is_stopped() -> None:
    registry = WorkerRegistry(InferenceSettings())
    worker = link(registry, "a")
    handle = await registry.place(job(max_tokens=10), needs_tools=False, user="u")
    assert handle is not None
    delivered = 0
    with pytest.raises(OutputLimitExceeded):  # noqa: PT012 (the loop is the flood)
        for _ in range(1000):
            await registry.deliver(worker, chunk(handle))
            delivered += 1
    assert delivered == handle.max_chunks == 10 * 1.1 + 16


@pytest.mark.anyio
async def test_one_enormous_chunk_exceeds_the_budget_by_characters() -> None:
    registry = WorkerRegistry(InferenceSettings())
    worker = link(registry, "a")
    handle = await registry.place(job(max_tokens=10), needs_tools=False, user="u")
    assert handle is not None
    with pytest.raises(OutputLimitExceeded):
        await registry.deliver(worker, chunk(handle, "x" * 100_000))


def test_a_worker_whose_context_is_too_small_is_not_eligible() -> None:
    registry = WorkerRegistry(InferenceSettings())
    link(registry, "small")
    assert registry.eligible("m", False, frozenset(), needs_context=400) != []
    assert registry.eligible("m", False, frozenset(), needs_context=600) == []


@pytest.mark.anyio
async def test_a_model_whose_worker_left_is_remembered_for_a_while() -> None:
    now = [0.0]
    registry = WorkerRegistry(InferenceSettings(model_memory_s=60), clock=lambda: now[0])
    worker = link(registry, "a", joined=False)
    await registry.add(worker)
    await registry.remove(worker.id, "crashed")
    assert not registry.serves("m")
    assert registry.recently_seen("m")
    [summary] = registry.models()
    assert (summary.id, summary.workers, summary.context_size) == ("m", 0, 512)
    now[0] = 61.0
    assert not registry.recently_seen("m")
    assert registry.models() == []


@pytest.mark.anyio
async def test_speed_and_charge_come_from_what_the_hub_received_not_the_workers_usage() -> None:
    now = [0.0]
    registry = WorkerRegistry(InferenceSettings(), clock=lambda: now[0])
    liar = link(registry, "liar")
    handle = await registry.place(job(max_tokens=100), needs_tools=False, user="u")
    assert handle is not None
    for _ in range(5):
        await registry.deliver(liar, chunk(handle))
        now[0] += 1.0
    forged = Usage(prompt_tokens=1, completion_tokens=10**6, total_tokens=10**6 + 1)
    await registry.deliver(
        liar, Done(job_id=handle.job.job_id, finish_reason="stop", model="m", usage=forged)
    )
    # 5 chunks over 5 s on the hub's clock: (5 - 1) / 5 s, whatever the worker claimed.
    assert registry.router.speed(liar.id) == pytest.approx(0.8)
    assert liar.tokens_served == handle.max_chunks  # a claim is capped at the job's allowance


@pytest.mark.anyio
async def test_a_record_already_linked_cannot_join_twice() -> None:
    registry = WorkerRegistry(InferenceSettings())
    first = link(registry, "a", joined=False)
    await registry.add(first)
    with pytest.raises(InferenceError) as refused:
        await registry.add(link(registry, "a", joined=False))
    assert refused.value.code == "already_connected"
    assert registry.workers["a"] is first
