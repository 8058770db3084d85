"""Asyncio client for the Prism data access gateway."""

from .client import PrismClient
from .errors import (
    AlreadyExistsError,
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
from .registry import Identity, Inbox, InboxMessage, MulticastResult, Registry

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "Identity",
    "Inbox",
    "InboxMessage",
    "InternalError",
    "InvalidArgumentError",
    "KeyNotFoundError",
    "KeyValue",
    "Message",
    "MulticastResult",
    "NamespaceNotFoundError",
    "NotFoundError",
    "PermissionDeniedError",
    "PrismClient",
    "PrismError",
    "PubSub",
    "Registry",
    "ResourceExhaustedError",
    "Subscription",
    "UnauthenticatedError",
    "UnavailableError",
]
