"""complete_text: the hub's own pool jobs (compaction, extraction) on an in-process fake worker."""

from __future__ import annotations

import pytest

from inference.dispatch import JobFailed, complete_text
from inference.pool_config import PoolConfig
from inference.protocol import Chunk, Delta, Done, Error, Frame, Job, ModelInfo, Usage
from inference.registry import WorkerLink, WorkerRegistry
from inference.settings import InferenceSettings

pytestmark = pytest.mark.anyio


def worker(registry: WorkerRegistry, reply: list[str] | None) -> WorkerLink:
    """A worker that answers each job with ``reply`` pieces, or fails it when ``reply`` is None."""

    async def send(frame: Frame) -> None:
        if not isinstance(frame, Job):
            return
        if reply is None:
            await registry.deliver(
                link, Error(job_id=frame.job_id, code="engine_error", message="boom")
            )
            return
        for piece in reply:
            await registry.deliver(link, Chunk(job_id=frame.job_id, delta=Delta(content=piece)))
        usage = Usage(prompt_tokens=3, completion_tokens=len(reply), total_tokens=3 + len(reply))
        await registry.deliver(
            link, Done(job_id=frame.job_id, finish_reason="stop", model=frame.model, usage=usage)
        )

    link = WorkerLink(
        id="w",
        name="w",
        owner_id=None,
        models={"m": ModelInfo(id="m", context_size=512)},
        hardware="cpu",
        slots=1,
        send=send,
    )
    registry.workers[link.id] = link
    return link


def registry() -> WorkerRegistry:
    return WorkerRegistry(InferenceSettings(), PoolConfig(queue_wait_s=0))


async def test_the_answer_comes_back_whole() -> None:
    pool = registry()
    worker(pool, ["A short ", "summary."])
    text = await complete_text(
        pool, "m", [{"role": "user", "content": "x"}], max_tokens=8, temperature=0
    )
    assert text == "A short summary."
    assert pool.workers["w"].jobs == {}


async def test_no_worker_for_the_model_is_a_clear_failure() -> None:
    with pytest.raises(JobFailed) as caught:
        await complete_text(
            registry(), "m", [{"role": "user", "content": "x"}], max_tokens=8, temperature=0
        )
    assert caught.value.code == "model_unavailable"


async def test_a_failing_worker_is_reported_not_hidden() -> None:
    pool = registry()
    worker(pool, None)
    with pytest.raises(JobFailed) as caught:
        await complete_text(
            pool, "m", [{"role": "user", "content": "x"}], max_tokens=8, temperature=0
        )
    assert caught.value.code == "engine_error"
