"""Sub-agent roles: built-in defaults, overrides and new roles from the pool config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inference.pool_config import PoolConfig
from inference.roles import BUILTIN_ROLES, RoleOverride, resolve_roles


def test_the_four_built_in_roles_exist_with_budgets() -> None:
    assert set(BUILTIN_ROLES) == {"scout", "coder", "tank", "reviewer"}
    for role in BUILTIN_ROLES.values():
        assert role.system_prompt and role.max_tokens > 0 and role.wall_s > 0


def test_an_override_changes_only_the_fields_it_names() -> None:
    roles = resolve_roles({"coder": RoleOverride(max_tokens=64, model="qwen")})
    assert roles["coder"].max_tokens == 64
    assert roles["coder"].model == "qwen"
    assert roles["coder"].system_prompt == BUILTIN_ROLES["coder"].system_prompt


def test_a_new_role_needs_a_prompt_and_a_budget() -> None:
    with pytest.raises(ValueError, match="needs system_prompt, max_tokens, wall_s"):
        resolve_roles({"poet": RoleOverride(description="writes verse")})
    roles = resolve_roles(
        {"poet": RoleOverride(system_prompt="Write verse.", max_tokens=50, wall_s=5)}
    )
    assert roles["poet"].tools == ()


def test_tools_are_allowed_by_name_or_by_star() -> None:
    assert BUILTIN_ROLES["coder"].allows_tool("anything")
    assert not BUILTIN_ROLES["reviewer"].allows_tool("anything")
    roles = resolve_roles({"reviewer": RoleOverride(tools=("lint",))})
    assert roles["reviewer"].allows_tool("lint") and not roles["reviewer"].allows_tool("rm")


def test_the_pool_config_refuses_a_bad_role() -> None:
    with pytest.raises(ValidationError, match="needs system_prompt"):
        PoolConfig.model_validate({"roles": {"poet": {"max_tokens": 5}}})
    with pytest.raises(ValidationError):
        PoolConfig.model_validate({"roles": {"Bad Name": {"max_tokens": 5}}})
    with pytest.raises(ValidationError):
        PoolConfig.model_validate({"roles": {"coder": {"max_tokens": 0}}})
