"""Sub-agent roles as data: scout, coder, tank and reviewer, overridable in the pool config.

A role is a system prompt, a preferred model, the tools it may be offered, and a budget (most
generated tokens, most wall seconds). The built-in roles below are defaults; the pool config's
``roles`` document changes any field of a built-in role or adds a role of its own
(``PUT /admin/api/pool-config``). :func:`resolve_roles` merges the two.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# The id under which `iamine worker` serves the bundled SmolLM2-135M-Instruct.
DEFAULT_MODEL = "smollm2-135m-instruct"
ANY_TOOL = "*"

RoleName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


class Role(BaseModel):
    """One sub-agent role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: RoleName
    description: str = Field(max_length=500)
    system_prompt: str = Field(min_length=1, max_length=8_000)
    model: str | None = Field(
        None, min_length=1, description="Preferred model; the pool's default when none is given."
    )
    tools: tuple[str, ...] = Field(
        (), description="Names of the tools the role may be offered; '*' allows any."
    )
    max_tokens: int = Field(gt=0, le=32_768, description="Most tokens one run may generate.")
    wall_s: float = Field(gt=0, le=3_600, description="Most seconds one run may take.")
    temperature: float | None = Field(None, ge=0, le=2)

    def allows_tool(self, name: str) -> bool:
        """Whether a tool of this name may be offered to the role."""
        return ANY_TOOL in self.tools or name in self.tools


class RoleOverride(BaseModel):
    """Changes to a built-in role, or a whole new role, as stored in the pool config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = Field(None, max_length=500)
    system_prompt: str | None = Field(None, min_length=1, max_length=8_000)
    model: str | None = Field(None, min_length=1)
    tools: tuple[str, ...] | None = None
    max_tokens: int | None = Field(None, gt=0, le=32_768)
    wall_s: float | None = Field(None, gt=0, le=3_600)
    temperature: float | None = Field(None, ge=0, le=2)


BUILTIN_ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role(
            name="scout",
            description="Explores a task and reports what matters, what is unknown, where to look.",
            system_prompt=(
                "You are a scout. Read the task, then report briefly as bullet points: the facts "
                "that matter, what is still unknown, and where to look next. Do not solve the "
                "task itself."
            ),
            tools=(ANY_TOOL,),
            max_tokens=512,
            wall_s=60,
            temperature=0.3,
        ),
        Role(
            name="coder",
            description="Writes or changes code for a well-defined task.",
            system_prompt=(
                "You are a careful programmer. Write the code the task asks for, complete and "
                "runnable, with a one-line explanation before it. Keep to the task."
            ),
            tools=(ANY_TOOL,),
            max_tokens=1024,
            wall_s=120,
            temperature=0.2,
        ),
        Role(
            name="tank",
            description="Takes long, heavy tasks: drafts, summaries, large rewrites.",
            system_prompt=(
                "You take on long, heavy work. Do the whole task thoroughly and in order, and "
                "finish with a short summary of what you did."
            ),
            max_tokens=2048,
            wall_s=300,
            temperature=0.5,
        ),
        Role(
            name="reviewer",
            description="Critiques an answer: errors, omissions, risks; says when it is fine.",
            system_prompt=(
                "You are a strict reviewer. Critique the answer you are given in at most three "
                "short sentences: factual errors, missing steps, risks. If it is fine, say so."
            ),
            max_tokens=256,
            wall_s=30,
            temperature=0.0,
        ),
    )
}


class UnknownRoleError(KeyError):
    """No role of this name exists (built in or configured)."""


def resolve_roles(overrides: dict[str, RoleOverride]) -> dict[str, Role]:
    """The roles in force: the built-in ones with the overrides applied, plus configured ones.

    Raises ``ValueError`` for a new role that lacks a system prompt or a budget.
    """
    roles = dict(BUILTIN_ROLES)
    for name, override in overrides.items():
        changes = override.model_dump(exclude_none=True)
        base = roles.get(name)
        if base is not None:
            roles[name] = Role.model_validate({**base.model_dump(), **changes})
            continue
        missing = [f for f in ("system_prompt", "max_tokens", "wall_s") if f not in changes]
        if missing:
            raise ValueError(f"the new role {name!r} needs {', '.join(missing)}")
        roles[name] = Role.model_validate({"name": name, "description": "", **changes})
    return roles


def find_role(roles: dict[str, Role], name: str) -> Role:
    """The role of this name, or :class:`UnknownRoleError`."""
    try:
        return roles[name]
    except KeyError:
        raise UnknownRoleError(name) from None
