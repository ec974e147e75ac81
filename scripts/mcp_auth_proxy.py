"""A header-adding reverse proxy for MCP test tools that cannot send an Authorization header.

The MCP conformance suite and the Inspector CLI take only a URL, while the hub's /mcp requires a
bearer token. CI runs this proxy on loopback in front of the hub: it forwards every request to
the hub's /mcp with `Authorization: Bearer <token>` added, streaming responses (SSE) through.
Usage: python scripts/mcp_auth_proxy.py --upstream http://127.0.0.1:8420/mcp --port 8421 (token in
IAMINE_TOKEN). Test harness only; never expose it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "authorization"}


def build(upstream: str, token: str) -> Starlette:
    """The proxy app: every method on /mcp, forwarded with the token."""
    client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0))

    async def forward(request: Request) -> StreamingResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["authorization"] = f"Bearer {token}"
        outgoing = client.build_request(
            request.method, upstream, headers=headers, content=await request.body()
        )
        response = await client.send(outgoing, stream=True)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in response.aiter_raw():
                yield chunk

        passed = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            body(),
            status_code=response.status_code,
            headers=passed,
            background=BackgroundTask(response.aclose),
        )

    methods = ["GET", "POST", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/mcp", forward, methods=methods)])


def main() -> None:
    """Run the proxy until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build(args.upstream, os.environ["IAMINE_TOKEN"])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
