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
from .pubsub import Message, PubSub, Subscription

__all__ = [
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "KeyNotFoundError",
    "KeyValue",
    "Message",
    "NamespaceNotFoundError",
    "NotFoundError",
    "PermissionDeniedError",
    "PrismClient",
    "PrismError",
    "PubSub",
    "ResourceExhaustedError",
    "Subscription",
    "UnauthenticatedError",
    "UnavailableError",
]
