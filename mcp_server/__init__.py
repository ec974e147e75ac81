"""MCP server: memory, sub-agent roles and pool models as MCP tools (stdio, streamable HTTP)."""
