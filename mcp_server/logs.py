"""MCP log notifications from the tools, at or above the level the client asked for.

Two protocol eras decide the level differently. On handshake connections (up to 2025-11-25) the
client sends ``logging/setLevel`` once and the level holds for the connection: it is kept in the
connection's scratch state and checked here. On 2026-07-28 connections each request opts in with
the reserved ``_meta`` log-level key, and the SDK's per-request gate decides. Until a handshake
client sets a level, ``info`` and above are sent.

What a tool logs says what it did and how the hub answered (names, counts, codes); never a
token, and never memory contents (fact or note texts, messages, queries) at any level.
"""

from __future__ import annotations

from typing import Any, get_args

from mcp.server.connection import allowed_log_levels
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import (
    EmptyResult,
    LoggingLevel,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    SetLevelRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

LOGGER_NAME = "iamine"
DEFAULT_LEVEL: LoggingLevel = "info"
LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)
"""RFC 5424 severities, least severe first (the order of the spec's ``LoggingLevel``)."""
_LEVEL_KEY = "iamine.log_level"


def _connection_state(request: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    """The per-connection scratch state the SDK keeps for exactly this use.

    ``ServerRequestContext`` does not expose the connection yet (the SDK's own TODO), so it is
    read from the request's session, which holds it.
    """
    state: dict[str, Any] = request.session._connection.state
    return state


def at_or_above(level: LoggingLevel) -> frozenset[LoggingLevel]:
    """``level`` and every more severe one."""
    return frozenset(LEVELS[LEVELS.index(level) :])


def allowed_levels(request: ServerRequestContext[Any, Any]) -> frozenset[LoggingLevel]:
    """The levels this request may send: its own opt-in (2026-07-28), or the connection's."""
    if request.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return allowed_log_levels(request.protocol_version, request.meta)
    level: LoggingLevel = _connection_state(request).get(_LEVEL_KEY, DEFAULT_LEVEL)
    return at_or_above(level)


def serve_set_level(mcp: MCPServer) -> None:
    """Serve ``logging/setLevel`` (and so declare the logging capability).

    Registered on the low-level server: the high-level one has no decorator for it. The SDK
    validates the level before this runs, so a bad one is an invalid-params error.
    """

    async def set_level(
        request: ServerRequestContext[Any, Any], params: SetLevelRequestParams
    ) -> EmptyResult:
        _connection_state(request)[_LEVEL_KEY] = params.level
        return EmptyResult()

    mcp._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)


async def log(ctx: Context[Any, Any], level: LoggingLevel, message: str) -> None:
    """Send ``message`` to the client as a log notification of this request, if it wants it."""
    request = ctx.request_context
    if level not in allowed_levels(request):
        return
    notification = LoggingMessageNotification(
        params=LoggingMessageNotificationParams(level=level, data=message, logger=LOGGER_NAME)
    )
    # Tied to the request: its response stream carries it (the only one 2026-07-28 allows).
    await ctx.session.send_notification(notification, related_request_id=request.request_id)
