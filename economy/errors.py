"""Errors of the ledger; ``code`` is machine-readable. Only the hub maps them to HTTP responses."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of the errors raised by the ledger."""

    code = "ledger_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidLedgerInput(LedgerError):
    """An amount, key, job id or account name the ledger refuses (negative, malformed...)."""

    code = "invalid_ledger_input"


class AccountNotFound(LedgerError):
    """No ledger account has this kind and owner (only holds and grants open accounts)."""

    code = "account_not_found"


class TransferNotFound(LedgerError):
    """No transfer has this key or id."""

    code = "transfer_not_found"


class HoldNotFound(LedgerError):
    """The job has no hold: it was never placed through the ledger."""

    code = "hold_not_found"


class HoldResolved(LedgerError):
    """The job's hold was already resolved another way (posted, voided or expired)."""

    code = "hold_resolved"


class HoldExpired(HoldResolved):
    """The job's hold expired, which reads as voided: it can no longer be posted."""

    code = "hold_expired"


class IdempotencyConflict(LedgerError):
    """The key was used before for a different request; the first one stands."""

    code = "idempotency_conflict"


class NotReversible(LedgerError):
    """The transfer moved nothing posted, or was reversed already."""

    code = "not_reversible"


class NotSettleable(LedgerError):
    """The job's earning cannot be settled: it was refunded, or went to the owner at posting."""

    code = "not_settleable"


class JobNotFound(LedgerError):
    """No charged job has this id (for a user: none of theirs; others' jobs are never revealed)."""

    code = "job_not_found"


class DisputeNotFound(LedgerError):
    """No dispute has this id."""

    code = "dispute_not_found"


class DisputeRefused(LedgerError):
    """The job cannot be disputed (or the dispute resolved) as asked; ``message`` says why."""

    code = "dispute_refused"
