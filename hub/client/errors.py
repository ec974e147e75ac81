"""The client's one error: what went wrong talking to a hub, said in one line."""

from __future__ import annotations

from hub.errors import HubError


class ClientError(HubError):
    """A failure the ``iamine`` user commands report as ``error: …`` and exit 1.

    ``status`` is the hub's HTTP status when the hub answered (``None`` when it could not be
    reached); ``code`` is the hub's error code, or ``client_error``.
    """

    code = "client_error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message, code=code)
        self.status = status
