"""Worker registry eligibility: tool-call verdicts, pinned jobs, readmission."""

from __future__ import annotations

from inference.protocol import Frame, ModelInfo
from inference.registry import WorkerLink, WorkerRegistry
from inference.settings import InferenceSettings


async def _ignore(frame: Frame) -> None:
    return None


def link(registry: WorkerRegistry, name: str, tools: bool = True) -> WorkerLink:
    worker = WorkerLink(
        id=name,
        name=name,
        owner_id=None,
        models={"m": ModelInfo(id="m", context_size=512, supports_tools=tools)},
        hardware="cpu",
        slots=1,
        send=_ignore,
    )
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
