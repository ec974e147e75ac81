"""docs/mcp.md lists exactly the tools the server publishes."""

from __future__ import annotations

import pytest

from mcp_server.docs import PAGE, offline_server, render, tool_table


@pytest.mark.anyio
async def test_the_tool_table_in_docs_matches_the_server() -> None:
    page = PAGE.read_text()
    expected = render(page, await tool_table(offline_server()))
    assert page == expected, "docs/mcp.md drifted: run `python -m mcp_server.docs`"
