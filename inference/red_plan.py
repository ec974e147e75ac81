"""The RED daemon's plan: an allow-list of actions, parsed and checked so that any plan is harmless.

A model writes the plan as JSON: ``{"actions": [...], "playbook": "notes"}``. Whatever it writes,
:func:`parse_plan` turns it into verdicts, one per proposed action, each either accepted or
rejected *with the reason*; only accepted actions can ever be applied. Three gates:

1. **Shape**: the answer must contain a JSON object with an ``actions`` list; each action must
   name an allow-listed ``action`` and match its schema exactly (pydantic, unknown fields refused).
2. **Count**: at most ``max_actions`` per run; the rest are rejected.
3. **Bounds**, checked against the pool as it is (:class:`World`), action after action: a share
   stays within ``[share_min, share_max]`` and moves at most ``max_share_step`` per run; at most
   ``max_exclusions`` exclusions per run, and never one that leaves a model with no worker; only
   workers excluded by the checker or by RED may be readmitted (a catalog exclusion is policy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

RED_EXCLUSION = "red"
READMITTABLE = frozenset({"checker_failed", RED_EXCLUSION})


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExcludeWorker(_Action):
    """Stop giving jobs to a worker."""

    action: Literal["exclude_worker"]
    worker_id: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=200)


class ReadmitWorker(_Action):
    """Give jobs again to a worker that the checker or RED excluded."""

    action: Literal["readmit_worker"]
    worker_id: str = Field(min_length=1, max_length=64)


class AdjustShare(_Action):
    """Set a hardware class's target share; the other classes are scaled to keep the sum at 1."""

    action: Literal["adjust_share"]
    hardware: Literal["gpu", "cpu"]
    share: float = Field(ge=0, le=1, allow_inf_nan=False)


class PurgeL1(_Action):
    """Delete the L1 messages past their TTL now (never a live one)."""

    action: Literal["purge_l1"]


class RaiseAlert(_Action):
    """Tell the operator something (logged and kept in the report)."""

    action: Literal["alert"]
    severity: Literal["info", "warning", "critical"]
    message: str = Field(min_length=1, max_length=500)


Action = Annotated[
    ExcludeWorker | ReadmitWorker | AdjustShare | PurgeL1 | RaiseAlert,
    Field(discriminator="action"),
]
ACTION_ADAPTER: TypeAdapter[Action] = TypeAdapter(Action)
ALLOWED_ACTIONS = ("exclude_worker", "readmit_worker", "adjust_share", "purge_l1", "alert")


class PlanBounds(BaseModel):
    """The limits every plan is held to (part of the ``IAMINE_RED__*`` settings)."""

    max_actions: int = Field(5, ge=0, le=50, description="Most actions one plan may propose.")
    max_exclusions: int = Field(1, ge=0, description="Most workers one plan may exclude.")
    share_min: float = Field(0.05, ge=0, le=1, description="Lowest class share a plan may set.")
    share_max: float = Field(0.95, ge=0, le=1, description="Highest class share a plan may set.")
    max_share_step: float = Field(
        0.1, ge=0, le=1, description="Most a plan may move one class share in one run."
    )
    playbook_max_chars: int = Field(
        4_000, ge=100, description="Longest playbook text RED may write (longer is cut)."
    )


@dataclass
class WorkerView:
    """What the plan check knows of one connected worker."""

    id: str
    name: str
    models: frozenset[str]
    excluded: str | None


@dataclass
class World:
    """The pool as the plan would leave it, updated as each action is accepted."""

    workers: dict[str, WorkerView]
    class_shares: Mapping[str, float]
    exclusions: int = 0
    purged: bool = False


@dataclass
class Verdict:
    """One proposed action and what became of it."""

    proposed: Any
    action: Action | None
    status: Literal["accepted", "rejected", "applied", "would_apply", "failed"]
    reason: str

    def as_json(self) -> dict[str, Any]:
        """The verdict as stored in the report."""
        return {"proposed": self.proposed, "status": self.status, "reason": self.reason}


@dataclass
class Plan:
    """A parsed plan: its verdicts, its playbook notes, or why nothing could be read."""

    verdicts: list[Verdict] = field(default_factory=list)
    playbook: str | None = None
    error: str | None = None

    @property
    def accepted(self) -> list[Verdict]:
        """Verdicts whose action passed every gate."""
        return [v for v in self.verdicts if v.status == "accepted"]


def extract_plan(text: str) -> dict[str, Any] | None:
    """The first JSON object with ``actions`` or ``playbook`` in a model's answer.

    Prose and code fences around it are fine. An object nested in a plan that was cut off (one
    action of a truncated answer) has neither key, so it is never taken for the plan.
    """
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict) and ({"actions", "playbook"} & value.keys()):
            return value
        start = text.find("{", start + 1)
    return None


def shares_after(current: Mapping[str, float], hardware: str, share: float) -> dict[str, float]:
    """Class shares with one class set to ``share`` and the others scaled to fill the rest."""
    others = {c: s for c, s in current.items() if c != hardware}
    total = sum(others.values())
    if total > 0:
        scaled = {c: round(s / total * (1 - share), 6) for c, s in others.items()}
    else:
        scaled = {c: round((1 - share) / len(others), 6) for c in others} if others else {}
    return {**scaled, hardware: share}


def _check(action: Action, world: World, bounds: PlanBounds) -> str | None:
    """Why the action is refused in this world, or None (and the world then includes it)."""
    if isinstance(action, ExcludeWorker | ReadmitWorker):
        worker = world.workers.get(action.worker_id)
        if worker is None:
            return f"no connected worker has id {action.worker_id!r}"
        if isinstance(action, ReadmitWorker):
            if worker.excluded is None:
                return f"worker {worker.name!r} is not excluded"
            if worker.excluded not in READMITTABLE:
                return f"worker {worker.name!r} is excluded for {worker.excluded!r}: not RED's call"
            worker.excluded = None
            return None
        if worker.excluded is not None:
            return f"worker {worker.name!r} is already excluded ({worker.excluded})"
        if world.exclusions >= bounds.max_exclusions:
            return f"over the limit of {bounds.max_exclusions} exclusion(s) per run"
        for model in sorted(worker.models):
            others = [
                w
                for w in world.workers.values()
                if w.id != worker.id and w.excluded is None and model in w.models
            ]
            if not others:
                return f"excluding {worker.name!r} would leave {model!r} with no worker"
        worker.excluded, world.exclusions = RED_EXCLUSION, world.exclusions + 1
        return None
    if isinstance(action, AdjustShare):
        if not bounds.share_min <= action.share <= bounds.share_max:
            return f"share {action.share:g} is outside [{bounds.share_min:g}, {bounds.share_max:g}]"
        current = world.class_shares.get(action.hardware, 0.0)
        if abs(action.share - current) > bounds.max_share_step + 1e-9:
            return (
                f"moving {action.hardware} from {current:g} to {action.share:g} exceeds the step "
                f"of {bounds.max_share_step:g} per run"
            )
        world.class_shares = shares_after(world.class_shares, action.hardware, action.share)
        return None
    if isinstance(action, PurgeL1):
        if world.purged:
            return "the plan already purges L1"
        world.purged = True
    return None


def _error_text(exc: ValidationError, name: str) -> str:
    first = exc.errors()[0]
    # The first location part is the discriminator's value (the action's name): leave it out.
    parts = [str(p) for p in first["loc"] if p != name]
    return f"invalid {'.'.join(parts) or 'action'}: {first['msg']}"


def judge_action(proposed: Any, world: World, bounds: PlanBounds) -> Verdict:
    """Parse and bound-check one proposed action."""
    if not isinstance(proposed, dict):
        return Verdict(proposed, None, "rejected", "an action must be a JSON object")
    name = proposed.get("action")
    if name not in ALLOWED_ACTIONS:
        allowed = ", ".join(ALLOWED_ACTIONS)
        return Verdict(proposed, None, "rejected", f"{name!r} is not on the allow-list ({allowed})")
    try:
        action = ACTION_ADAPTER.validate_python(proposed)
    except ValidationError as exc:
        return Verdict(proposed, None, "rejected", _error_text(exc, name))
    refusal = _check(action, world, bounds)
    if refusal is not None:
        return Verdict(proposed, action, "rejected", refusal)
    return Verdict(proposed, action, "accepted", "within the allow-list and bounds")


def parse_plan(text: str, world: World, bounds: PlanBounds) -> Plan:
    """Read a model's answer into a plan whose every action is judged; never raises."""
    document = extract_plan(text)
    if document is None:
        return Plan(error='no JSON plan (an object with "actions") in the model\'s answer')
    plan = Plan()
    notes = document.get("playbook")
    if isinstance(notes, str) and notes.strip():
        plan.playbook = notes.strip()[: bounds.playbook_max_chars]
    actions = document.get("actions", [])
    if not isinstance(actions, list):
        plan.error = "'actions' must be a list"
        return plan
    for position, proposed in enumerate(actions):
        if position >= bounds.max_actions:
            limit = f"over the limit of {bounds.max_actions} actions per run"
            plan.verdicts.append(Verdict(proposed, None, "rejected", limit))
            continue
        plan.verdicts.append(judge_action(proposed, world, bounds))
    return plan
