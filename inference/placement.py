"""What placement across hub replicas shares: the models a pool serves, and the other replicas.

:class:`ModelSummary` is the pool's view of one model (this replica's workers and, merged by
:func:`together`, the other replicas'); :class:`RemotePlacement` is what
:class:`~inference.registry.WorkerRegistry` asks of the other replicas' workers
(``hub/replica_dispatch.py`` implements it) when none of its own is free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from inference.link import JobHandle
from inference.protocol import Job
from inference.router import Candidate, Standings, Waiter


@dataclass(frozen=True)
class ModelSummary:
    """A model served by the pool right now, or seen lately (``workers`` 0)."""

    id: str
    context_size: int
    supports_tools: bool
    workers: int
    free_slots: int


def together(a: ModelSummary, b: ModelSummary) -> ModelSummary:
    """One model's summaries from two sets of workers, as one."""
    return ModelSummary(
        id=a.id,
        context_size=max(a.context_size, b.context_size),
        supports_tools=a.supports_tools or b.supports_tools,
        workers=a.workers + b.workers,
        free_slots=a.free_slots + b.free_slots,
    )


class RemotePlacement(Standings, Protocol):
    """Workers linked to the pool's other hub replicas (``hub/replica_dispatch.py``).

    Also the router's :class:`~inference.router.Standings` of those workers: placement weighs
    them with this replica's own, pool-wide.
    """

    def candidates(
        self,
        model: str,
        *,
        needs_tools: bool,
        needs_context: int,
        min_trust: int,
        avoid: frozenset[str] | set[str],
    ) -> Sequence[Candidate]:
        """The other replicas' free workers that could take the job, as last heard."""
        ...

    def place(
        self,
        chosen: Candidate,
        job: Job,
        *,
        needs_tools: bool,
        user: str,
        needs_context: int,
        min_trust: int,
    ) -> JobHandle:
        """A handle on ``chosen`` (one of :meth:`candidates`), not sent yet."""
        ...

    def try_place(
        self,
        job: Job,
        *,
        needs_tools: bool,
        user: str,
        avoid: frozenset[str],
        needs_context: int,
        min_trust: int,
    ) -> JobHandle | None:
        """A handle on the router's choice among the other replicas' free workers, or None."""
        ...

    def running(self) -> Mapping[str, int]:
        """Jobs running on the other replicas' workers, per user (the queue's order)."""
        ...

    def defer(
        self, waiter: Waiter, running: Mapping[str, int], waited_s: float, here: bool
    ) -> bool:
        """Whether a better waiter on another replica gets this model's free slots first.

        ``here``: a slot of the model is free on this replica (it may be held for that one).
        """
        ...

    def holding(self, model: str) -> bool:
        """Whether this replica's free slots of ``model`` are held for another's waiter."""
        ...

    def capacity(self, model: str) -> float:
        """Tokens/s the other replicas' workers of ``model`` can generate, all slots busy."""
        ...

    def free_slots(self, model: str) -> int:
        """Free slots for the model on the other replicas, as last heard."""
        ...

    def serves(self, model: str) -> bool:
        """Whether a worker of another replica offers the model, free or busy."""
        ...

    def models(self) -> list[ModelSummary]:
        """The models the other replicas' workers serve, as last heard."""
        ...
