"""Revocation reaches what is already open: worker links and MCP streams end when their token dies.

A token is checked when a request or a worker link starts, but a worker link or an MCP stream
then stays open for hours. Whatever keeps acting on a resolved token holds a lease from
:class:`Leases` for as long as it is open, and a token's death ends every lease on it:

- at once, when this process revoked the token or disabled its user (the routes call
  :meth:`~hub.auth.TokenResolver.forget` and :meth:`~hub.auth.TokenResolver.forget_user`);
- within ``revocation_check_s`` otherwise: the resolver's sweep re-reads every token this process
  holds a lease on or has cached, so a revocation by the CLI, by another hub or by a trigger
  (a parent's revocation), a disabled user and an expiry all reach open links.

Ending a lease only calls its ``end`` callback (set an event, cancel a scope); the holder closes
its own connection, so nothing is torn down from under a task that is still using it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

import anyio

End = Callable[[str], None]
"""Called once, with the reason code (``token_revoked``, ``token_expired``, ``user_disabled``)."""


@dataclass(eq=False)
class _Lease:
    token_id: UUID
    user_id: UUID | None
    end: End


class Leases:
    """Open things (worker links, MCP streams) by the token they act on, ended when it dies."""

    def __init__(self) -> None:
        self._leases: set[_Lease] = set()

    def __len__(self) -> int:
        return len(self._leases)

    @contextmanager
    def hold(self, token_id: UUID, user_id: UUID | None, end: End) -> Iterator[None]:
        """Hold a lease while the block runs; ``end(reason)`` is called if the token dies first."""
        lease = _Lease(token_id, user_id, end)
        self._leases.add(lease)
        try:
            yield
        finally:
            self._leases.discard(lease)

    async def wait(self, token_id: UUID, user_id: UUID | None) -> str:
        """Hold a lease until the token dies; return the reason code."""
        died = anyio.Event()
        reasons: list[str] = []

        def end(reason: str) -> None:
            reasons.append(reason)
            died.set()

        with self.hold(token_id, user_id, end):
            await died.wait()
        return reasons[0]

    def token_ids(self) -> set[UUID]:
        """Tokens that some lease acts on."""
        return {lease.token_id for lease in self._leases}

    def end_tokens(self, dead: Mapping[UUID, str]) -> int:
        """End every lease on these tokens (token id → reason code); return how many ended."""
        ended = [lease for lease in self._leases if lease.token_id in dead]
        for lease in ended:
            self._end(lease, dead[lease.token_id])
        return len(ended)

    def end_user(self, user_id: UUID, reason: str = "user_disabled") -> int:
        """End every lease on a user's tokens; return how many ended."""
        ended = [lease for lease in self._leases if lease.user_id == user_id]
        for lease in ended:
            self._end(lease, reason)
        return len(ended)

    def _end(self, lease: _Lease, reason: str) -> None:
        self._leases.discard(lease)
        lease.end(reason)
