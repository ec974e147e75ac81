"""Canaries: the checker verifies a worker before the pool trusts it (docs/trust.md).

A canary is a plain user chat with a known answer: a greedy prompt (temperature 0, a fixed seed,
a short ``max_tokens``) pinned to the worker like any checker job, shaped like a user's job so
that the worker cannot tell them apart. The answer is known because a **trusted** worker (trust
2 or more, never the one checked) of the same model computed it; references are cached in memory
per model and prompt. With no trusted worker of the model, two workers of **different owners**
answer the same prompts (a BOINC-style quorum): when they agree both pass; when they disagree
nobody can tell who lied, so the check is inconclusive and nobody is slashed. Quorum answers are
never cached as references.

Each canary job is also a probe of the worker's word: ``done.usage`` above what the hub received
(each token is at least one byte streamed) or above the prompt's size (with an allowance for the
chat template) is **forged usage**; a ``done`` naming another model is a **wrong model** (the
registry turns it into a ``model_mismatch`` failure). A wrong answer, forged usage or a wrong model
**fails** the worker: it is slashed (below trust 3) with the evidence, or excluded (trust 3, the
admin's own machine: an alert, not a punishment). Every model passing promotes a new worker to 1.
A busy worker, a timeout, an error, no reference, or a disagreement with a worker of equal trust
is **inconclusive**: nothing happens.

When: a new worker (trust 0) is queued for canaries as it joins (:meth:`Canaries.request`,
consumed by :meth:`Canaries.run`); each checker run (:meth:`Canaries.sweep`) checks the new
workers again, those measured implausibly fast, and a random share of the others (spot checks).
A slashed worker is not verified again before ``slash_cooldown_s``.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

import anyio
import asyncpg
import structlog

from inference import identity
from inference.checker import CheckerSettings, PinnedRun, WorkerBusy, run_pinned
from inference.dispatch import JobFailed
from inference.link import WorkerLink
from inference.protocol import Job, SamplingParams
from inference.registry import MODEL_MISMATCH, WorkerRegistry

log = structlog.get_logger()

CANARY_FAILED = "canary_failed"
EVIDENCE_CHARS = 2000
# Plain questions a user might ask, each with its own seed (greedy decoding ignores it; a
# constant would mark the job as the hub's).
CANARY_PROMPTS: tuple[tuple[str, int], ...] = (
    ("What is the capital of Japan?", 7),
    ("Give me three words that rhyme with cat.", 42),
    ("How many legs does a spider have?", 1234),
    ("Translate 'good morning' into Spanish.", 99),
    ("Which planet is closest to the sun?", 2024),
    ("What do bees make?", 5),
    ("Write one sentence about the ocean.", 314),
    ("What is 12 times 3?", 8),
    ("Suggest a name for a small grey cat.", 77),
    ("What does a thermometer measure?", 21),
    ("Finish this sentence: The quick brown fox", 1001),
    ("Name two colours of the rainbow.", 66),
)

Outcome = Literal["passed", "failed", "inconclusive"]
Slasher = Callable[[UUID, str, dict[str, Any]], Awaitable[object]]
"""Slash a worker record: ``(worker_id, reason, evidence)`` (the hub's ``slash_worker``)."""


@dataclass(frozen=True)
class Reference:
    """A canary's expected answer and the trusted worker that computed it."""

    text: str
    worker_id: str
    trust: int


@dataclass
class Verdict:
    """The canaries' finding on one model of one worker."""

    worker_id: str
    worker_name: str
    model: str
    trigger: str
    outcome: Outcome = "inconclusive"
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    action: str | None = None

    def brief(self) -> dict[str, Any]:
        """The verdict as the checker job's summary shows it."""
        return {
            "worker": self.worker_name,
            "model": self.model,
            "trigger": self.trigger,
            "outcome": self.outcome,
            "reason": self.reason,
            "action": self.action,
        }


def normalise(text: str) -> str:
    """Whitespace collapsed and trimmed: engines differ in spacing, not in greedy tokens."""
    return " ".join(text.split())


def agrees(expected: str, received: str, chars: int) -> bool:
    """Whether two greedy answers agree on their first ``chars`` characters."""
    return normalise(expected)[:chars] == normalise(received)[:chars]


def usage_problem(job: Job, run: PinnedRun, settings: CheckerSettings) -> str | None:
    """Why the usage a worker reported for ``run`` is forged, or None when plausible."""
    assert run.done is not None
    usage, canaries = run.done.usage, settings.canaries
    produced = max(run.output_bytes, run.chunks)
    if usage.completion_tokens > produced + canaries.completion_slack_tokens:
        return (
            f"reported {usage.completion_tokens} completion tokens for {run.chunks} chunk(s) "
            f"of {run.output_bytes} bytes received"
        )
    prompt = json.dumps(job.messages, ensure_ascii=False) + json.dumps(job.tools or [])
    limit = len(prompt.encode()) + canaries.prompt_allowance_tokens
    if usage.prompt_tokens > limit:
        return f"reported {usage.prompt_tokens} prompt tokens for a prompt of at most {limit}"
    return None


def speed_suspects(registry: WorkerRegistry, factor: float) -> list[WorkerLink]:
    """Workers measured ``factor`` times faster than the fastest other worker of a model."""
    speeds = {
        link.id: speed
        for link in registry.workers.values()
        if link.excluded is None and (speed := registry.router.speed(link.id))
    }
    suspects = []
    for worker_id, speed in speeds.items():
        link = registry.workers[worker_id]
        for model in link.models:
            others = [
                s
                for i, s in speeds.items()
                if i != worker_id and model in registry.workers[i].models
            ]
            if others and speed > factor * max(others):
                suspects.append(link)
                break
    return suspects


def _clip(text: str) -> str:
    # Evidence is stored as JSON without NUL: a liar's text may contain anything.
    return text[:EVIDENCE_CHARS].replace("\x00", "\ufffd")


class _Failure(Exception):
    """A canary job proved the worker lied: ``kind`` and the evidence."""

    def __init__(self, kind: str, reason: str, evidence: dict[str, Any]) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.evidence = evidence


class _Inconclusive(Exception):
    """A canary job told nothing (busy, timeout, error)."""


class Canaries:
    """Runs canaries on workers and applies the verdicts (promotion, slash, exclusion)."""

    def __init__(
        self,
        registry: WorkerRegistry,
        pool: asyncpg.Pool,
        settings: CheckerSettings,
        slash: Slasher,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.references: dict[tuple[str, str], Reference] = {}
        self._pool = pool
        self._slash = slash
        self._rng = rng or random.Random()
        self._lock = anyio.Lock()
        self._send, self._receive = anyio.create_memory_object_stream[str](
            settings.canaries.queue_size
        )
        self._queued: set[str] = set()
        self._last_run: dict[str, float] = {}

    def request(self, link: WorkerLink) -> None:
        """A worker joined: queue a new one (trust 0) for canaries soon (never blocks)."""
        canaries = self.settings.canaries
        if not canaries.enabled or link.trust != identity.NEW or link.id in self._queued:
            return
        last = self._last_run.get(link.id)
        if last is not None and time.monotonic() - last < canaries.rejoin_after_s:
            return
        try:
            self._send.send_nowait(link.id)
        except anyio.WouldBlock:
            log.warning("canary_queue_full", worker=link.id, name=link.name)
            return
        self._queued.add(link.id)

    async def run(self) -> None:
        """Check the queued workers one by one until cancelled."""
        async for worker_id in self._receive:
            self._queued.discard(worker_id)
            link = self.registry.workers.get(worker_id)
            if link is None:
                continue
            try:
                await self.check(link, "joined")
            except Exception:
                # The top of a background loop: one failed check (a database error, a slash
                # refused) is logged; the next worker is still checked.
                log.exception("canary_check_failed", worker=worker_id)

    async def sweep(self) -> list[dict[str, Any]]:
        """The checker run's canaries: new workers, implausibly fast ones, random spot checks."""
        canaries = self.settings.canaries
        if not canaries.enabled:
            return []
        targets = {
            link.id: "speed" for link in speed_suspects(self.registry, canaries.speed_factor)
        }
        for link in self.registry.workers.values():
            if link.excluded is not None or link.id in targets:
                continue
            if link.trust == identity.NEW:
                targets[link.id] = "unverified"
            elif self._rng.random() < canaries.spot_check_rate:
                targets[link.id] = "spot"
        verdicts: list[dict[str, Any]] = []
        for worker_id, trigger in targets.items():
            target = self.registry.workers.get(worker_id)
            if target is not None:
                verdicts.extend(v.brief() for v in await self.check(target, trigger))
        return verdicts

    async def check(self, link: WorkerLink, trigger: str) -> list[Verdict]:
        """Run canaries on every model of ``link`` (one check at a time) and apply the verdicts."""
        async with self._lock:
            self._last_run[link.id] = time.monotonic()
            if self.registry.workers.get(link.id) is not link or link.excluded is not None:
                return []
            if await self._cooling_down(link):
                cooling = Verdict(link.id, link.name, "*", trigger, reason="slashed lately")
                return [cooling]
            verdicts = []
            for model in list(link.models):
                verdict = await self._check_model(link, model, trigger)
                verdicts.append(verdict)
                if verdict.outcome == "failed":
                    break
            passed = bool(verdicts) and all(v.outcome == "passed" for v in verdicts)
            if passed and await self._promote(link, f"passed canaries ({trigger})"):
                verdicts[-1].action = "promoted"
            for verdict in verdicts:
                log.info("canary_verdict", **verdict.brief(), worker_id=verdict.worker_id)
            return verdicts

    async def _check_model(self, link: WorkerLink, model: str, trigger: str) -> Verdict:
        verdict = Verdict(link.id, link.name, model, trigger)
        trusted = self._trusted_for(link, model)
        peer = None if trusted else await self._peer_for(link, model)
        if trusted is None and peer is None:
            verdict.reason = "no reference: no trusted worker, no worker of another owner"
            return verdict
        count = min(self.settings.canaries.prompts, len(CANARY_PROMPTS))
        try:
            for prompt, seed in self._rng.sample(CANARY_PROMPTS, count):
                job = self._job(model, prompt, seed)
                if trusted is not None:
                    reference: Reference | None = await self._reference(link, trusted, job)
                else:
                    assert peer is not None
                    reference = await self._quorum(peer, job, trigger)
                if reference is None:
                    verdict.reason = "quorum: the peer failed its own canary"
                    return verdict
                received = await self._ask(link, job)
                if not agrees(reference.text, received, self.settings.canaries.compare_chars):
                    return await self._disagreement(verdict, link, job, reference, received)
        except _Failure as failure:
            await self._fail(verdict, link, failure)
            return verdict
        except _Inconclusive as exc:
            verdict.reason = str(exc)
            return verdict
        verdict.outcome = "passed"
        verdict.reason = "agrees with a trusted worker" if trusted else "quorum agrees"
        if peer is not None and await self._promote(peer, f"canary quorum with {link.name}"):
            verdict.action = f"peer {peer.name} promoted"
        return verdict

    def _trusted_for(self, link: WorkerLink, model: str) -> WorkerLink | None:
        """The most trusted other worker of ``model`` at trust 2 or more (a reference)."""
        candidates = [
            other
            for other in self.registry.workers.values()
            if other is not link
            and other.excluded is None
            and model in other.models
            and other.trust >= identity.ESTABLISHED
        ]
        return max(candidates, key=lambda o: o.trust, default=None)

    async def _peer_for(self, link: WorkerLink, model: str) -> WorkerLink | None:
        """A quorum peer: another owner's untrusted worker of ``model``, not slashed lately."""
        for other in self.registry.workers.values():
            if (
                other is not link
                and other.excluded is None
                and model in other.models
                and other.owner_id != link.owner_id
                and not await self._cooling_down(other)
            ):
                return other
        return None

    def _job(self, model: str, prompt: str, seed: int) -> Job:
        """A canary job, shaped like a user's chat job."""
        canaries = self.settings.canaries
        return Job(
            job_id=uuid.uuid4().hex,
            model=model,
            messages=[{"role": "user", "content": prompt}],
            params=SamplingParams(max_tokens=canaries.max_tokens, temperature=0.0, seed=seed),
            deadline_s=self.registry.settings.job_deadline_s,
        )

    async def _reference(self, link: WorkerLink, trusted: WorkerLink, job: Job) -> Reference:
        """The cached answer of a trusted worker to ``job``'s prompt, or ``trusted``'s now.

        A cached answer is used unless it came from the worker checked or from a worker less
        trusted than ``trusted``. A reference worker that fails tells nothing about ``link``.
        """
        key = (job.model, job.messages[0]["content"])
        cached = self.references.get(key)
        if cached is not None and cached.worker_id != link.id and cached.trust >= trusted.trust:
            return cached
        try:
            run = await self._run(trusted, job.model_copy(update={"job_id": uuid.uuid4().hex}))
        except _Failure as failure:
            raise _Inconclusive(f"the reference worker failed: {failure.reason}") from None
        reference = Reference(run.text, trusted.id, trusted.trust)
        self.references[key] = reference
        return reference

    async def _quorum(self, peer: WorkerLink, job: Job, trigger: str) -> Reference | None:
        """The peer's answer as the reference; a peer caught lying is failed on its own."""
        try:
            text = await self._ask(peer, job.model_copy(update={"job_id": uuid.uuid4().hex}))
        except _Failure as failure:
            await self._fail(
                Verdict(peer.id, peer.name, job.model, f"quorum:{trigger}"), peer, failure
            )
            return None
        return Reference(text, peer.id, peer.trust)

    async def _run(self, link: WorkerLink, job: Job) -> PinnedRun:
        """One pinned job; anything but an answer is inconclusive (never the worker's fault)."""
        try:
            run = await run_pinned(self.registry, link, job, self.settings)
        except WorkerBusy as exc:
            raise _Inconclusive(f"busy: {exc}") from None
        except TimeoutError:
            raise _Inconclusive("timed out") from None
        except JobFailed as exc:
            if exc.code == MODEL_MISMATCH:
                raise _Failure(
                    "wrong_model",
                    f"canary: answered {job.model!r} with another model",
                    {
                        "model": job.model,
                        "prompt": job.messages[0]["content"],
                        "error": exc.message,
                    },
                ) from None
            raise _Inconclusive(f"{exc.code}: {exc.message}") from None
        if run.done is None:
            raise _Inconclusive("the worker ended without a done frame")
        return run

    async def _ask(self, link: WorkerLink, job: Job) -> str:
        """The worker's answer to a canary, its usage checked against what the hub received."""
        run = await self._run(link, job)
        assert run.done is not None
        problem = usage_problem(job, run, self.settings)
        if problem is not None:
            raise _Failure(
                "forged_usage",
                f"canary: forged usage ({problem})",
                {
                    "model": job.model,
                    "prompt": job.messages[0]["content"],
                    "received": _clip(run.text),
                    "usage": run.done.usage.model_dump(),
                    "chunks": run.chunks,
                    "output_bytes": run.output_bytes,
                },
            )
        return run.text

    async def _disagreement(
        self, verdict: Verdict, link: WorkerLink, job: Job, reference: Reference, received: str
    ) -> Verdict:
        """A different answer: a lie against a more trusted reference, else inconclusive."""
        evidence = {
            "model": job.model,
            "prompt": job.messages[0]["content"],
            "expected": _clip(reference.text),
            "received": _clip(received),
            "compared_chars": self.settings.canaries.compare_chars,
            "reference_worker": reference.worker_id,
            "reference_trust": reference.trust,
        }
        if reference.trust < identity.ESTABLISHED:
            verdict.reason = "quorum disagrees: nobody can tell who is wrong"
        elif link.trust < reference.trust or link.trust == identity.GRANTED:
            await self._fail(
                verdict, link, _Failure("wrong_answer", "canary: wrong answer", evidence)
            )
        else:
            verdict.reason = "disagrees with a worker of equal trust"
        verdict.evidence = evidence
        return verdict

    async def _fail(self, verdict: Verdict, link: WorkerLink, failure: _Failure) -> None:
        """Slash the worker (exclude it at trust 3) with the evidence."""
        verdict.outcome = "failed"
        verdict.reason = failure.reason
        verdict.evidence = {"kind": failure.kind, "trigger": verdict.trigger, **failure.evidence}
        if link.trust == identity.GRANTED:
            self.registry.exclude(link, CANARY_FAILED, failure.reason)
            verdict.action = "excluded"
            return
        if link.record_id is None:
            return
        await self._slash(link.record_id, failure.reason, verdict.evidence)
        verdict.action = "slashed"

    async def _promote(self, link: WorkerLink, reason: str) -> bool:
        """0 → 1 in the record and on the live link."""
        if link.record_id is None or link.trust != identity.NEW:
            return False
        async with self._pool.acquire() as conn:
            promoted = await identity.promote_verified(conn, link.record_id, reason)
        if promoted:
            self.registry.apply_trust(link.id, identity.VERIFIED)
        return promoted

    async def _cooling_down(self, link: WorkerLink) -> bool:
        """Whether the worker was slashed less than ``slash_cooldown_s`` ago."""
        if link.record_id is None:
            return False
        async with self._pool.acquire() as conn:
            cooling: bool = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM slashing_events WHERE worker_id = $1 "
                "AND created_at > now() - make_interval(secs => $2))",
                link.record_id,
                self.settings.canaries.slash_cooldown_s,
            )
        return cooling
