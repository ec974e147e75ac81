"""Federation errors; ``code`` is machine-readable. Only the hub maps them to HTTP responses."""

from __future__ import annotations


class FederationError(Exception):
    """Base of the errors raised by the federation package."""

    code = "federation_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class FederationDisabled(FederationError):
    """Federation is off in this hub (or has no public URL)."""

    code = "federation_disabled"


class IdentityError(FederationError):
    """The pool's key file is unusable: unreadable, malformed or readable by others."""

    code = "pool_key_unusable"


class InvalidFederationInput(FederationError):
    """A pool id, URL, invite code or message field is malformed."""

    code = "invalid_federation_input"


class SignatureRejected(FederationError):
    """A signed request or answer failed authentication.

    ``code`` says which check: ``signature_missing``, ``signature_invalid``, ``digest_mismatch``,
    ``signature_expired``, ``signature_future``, ``unknown_peer``, ``replayed_request``.
    """

    code = "signature_invalid"


class WrongDestination(FederationError):
    """A correctly signed request was meant for another pool (its ``@authority`` is not ours)."""

    code = "wrong_destination"


class InviteRefused(FederationError):
    """An invite is unknown, used, expired, bound to another pool, or names another fingerprint.

    ``code``: ``invite_invalid``, ``invite_used``, ``invite_expired``, ``fingerprint_mismatch``.
    """

    code = "invite_invalid"


class PeerNotFound(FederationError):
    """No admitted peer has this pool id."""

    code = "peer_not_found"


class PeerFailed(FederationError):
    """A call to a peer failed: unreachable, refused, or its answer did not authenticate.

    ``status`` is the peer's HTTP status when it answered (``None`` when it did not), and
    ``code`` the peer's error code, or ``peer_unreachable`` / ``peer_answer_invalid``.
    """

    code = "peer_failed"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message, code=code)
        self.status = status
