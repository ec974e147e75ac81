"""Errors of semantic memory (embeddings, L3 facts, L4 notes); ``code`` is machine-readable.

Memory's encryption errors are :class:`memory.crypto.CryptoError`; these are the others. Only the
hub maps them to HTTP responses (``hub/errors.py``).
"""

from __future__ import annotations


class MemoryStoreError(Exception):
    """Base of the errors raised by semantic memory."""

    code = "memory_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class EmbeddingModelMissing(MemoryStoreError):
    """The embedding model's folder is missing or incomplete; ``iamine models install`` fixes it."""

    code = "embedding_model_missing"


class InvalidNamespace(MemoryStoreError):
    """A note namespace is not ``user:<id>``, ``pool:<name>`` or ``fed:<name>``."""

    code = "invalid_namespace"


class NamespaceForbidden(MemoryStoreError):
    """The caller may not read or write this namespace (not theirs, unsubscribed, a rule)."""

    code = "namespace_forbidden"


class NamespaceNotFound(MemoryStoreError):
    """No shared namespace has this name (the admin, or a user they allowed, makes them)."""

    code = "namespace_not_found"


class NamespaceExists(MemoryStoreError):
    """A shared namespace of that name exists already."""

    code = "namespace_exists"
