"""Asyncio client for the Prism data access gateway."""

from .client import PrismClient
from .errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    KeyNotFoundError,
    NamespaceNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    PrismError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from .keyvalue import KeyValue

__all__ = [
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "KeyNotFoundError",
    "KeyValue",
    "NamespaceNotFoundError",
    "NotFoundError",
    "PermissionDeniedError",
    "PrismClient",
    "PrismError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]
